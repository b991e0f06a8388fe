#!/usr/bin/env bash
# System packages for the PDF report (nbconvert --to pdf runs XeLaTeX; pandoc converts Markdown).
# Debian/Ubuntu; about 3 minutes. Elsewhere install TeX Live (xelatex) and pandoc yourself.
set -euo pipefail
if command -v xelatex >/dev/null && command -v pandoc >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
    echo "selfsup: PDF export needs xelatex and pandoc; install TeX Live and pandoc, then rerun" >&2
    exit 1
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
echo "installing TeX (texlive-xetex, texlive-fonts-recommended, texlive-plain-generic) and pandoc ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc >/dev/null

#!/usr/bin/env bash
# Debian's chromium for the browser checks (make check-browser, tests/test_browser.py): Playwright's
# Python package drives this system browser; no browser is downloaded. About 30 s (25 s measured on
# Debian 12: apt-get update and 130 packages, 150 MB). SELFSUP_CHROMIUM names another binary.
set -euo pipefail
CHROMIUM="${SELFSUP_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then exit 0; fi
if ! command -v apt-get >/dev/null || grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null; then
    # (Ubuntu's chromium package only installs the snap, which does not run in containers.)
    echo "selfsup: the browser checks need Chromium at $CHROMIUM: install Debian's chromium package," \
         "or set SELFSUP_CHROMIUM to a Chromium/Chrome binary" >&2
    exit 1
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
echo "installing chromium (Debian package) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
"$CHROMIUM" --version 2>/dev/null

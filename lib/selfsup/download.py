"""Downloads: Tiny-ImageNet-200's zip, fetched once into a cache with pooch and
checked against its published hash, then converted to the course format by
selfsup.imagefolder in the same step (the zip is read in place, never unpacked).

The URL can point at a mirror (argument, or $SELFSUP_TINYIMAGENET_URL) and the
cache can move ($SELFSUP_CACHE; default the user cache folder, e.g.
~/.cache/selfsup). A download is written to a temporary file in the cache and
kept only when its hash matches, so a truncated or corrupt download leaves
nothing behind, and a cached file that does not match is fetched again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import imagefolder
from .data import DataError, _one_line, check_new

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# The official zip, 248,100,043 bytes. Only its MD5 is published, by the dataset
# loaders that download it (e.g. ContinualAI/avalanche, tiny_imagenet.py) and
# beside Mila's copy (datasets-mila/datasets--tinyimagenet, md5sums); we found no
# published SHA-256, and we do not invent one.
TINY_IMAGENET_HASH = "md5:90528d7ca1a48142e341f4ef8d21d0de"
TINY_IMAGENET_FILE = "tiny-imagenet-200.zip"
URL_ENV = "SELFSUP_TINYIMAGENET_URL"
CACHE_ENV = "SELFSUP_CACHE"
_HASH = re.compile(r"(md5:[0-9a-f]{32}|sha1:[0-9a-f]{40}|(sha256:)?[0-9a-f]{64}|sha512:[0-9a-f]{128})")


def cache_dir(cache=None) -> Path:
    """``cache``, else $SELFSUP_CACHE, else the user cache folder (~/.cache/selfsup on Linux)."""
    if cache or os.environ.get(CACHE_ENV):
        return Path(cache or os.environ[CACHE_ENV])
    import pooch  # only downloads need pooch: training and evaluation run without it

    return Path(pooch.os_cache("selfsup"))


def fetch(url: str | None = None, known_hash: str | None = None, cache=None, progress: bool = True) -> Path:
    """The cached Tiny-ImageNet-200 zip, downloaded first if the cache has no copy
    with ``known_hash`` ("md5:..." or "sha256:..."; default the official zip's MD5).
    ``url`` defaults to $SELFSUP_TINYIMAGENET_URL, else the official address.
    ``progress`` shows a bar on stderr. Raises DataError (one line) on any failure."""
    url = url or os.environ.get(URL_ENV) or TINY_IMAGENET_URL
    known_hash = (known_hash or TINY_IMAGENET_HASH).strip().lower()
    if not url.startswith(("http://", "https://", "ftp://")):
        raise DataError(
            f"--url {url}: expected an http://, https:// or ftp:// address (for a zip you already "
            "have, use: selfsup data convert ZIP DEST)"
        )
    if not _HASH.fullmatch(known_hash):
        raise DataError(
            f"--hash {known_hash}: expected md5:<32 hex digits>, sha256:<64 hex digits> (or sha1:, sha512:)"
        )
    # Imported here, not at the top: the rest of the library (and the CLI's other commands) runs
    # where pooch is not installed, as on a bare GPU machine.
    import pooch
    import requests  # pooch's HTTP client: its exceptions are what a failed download raises

    cache = cache_dir(cache)
    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=1 << 20) if url.startswith("http") else None
    try:
        path = pooch.retrieve(
            url, known_hash, fname=TINY_IMAGENET_FILE, path=cache, downloader=downloader, progressbar=progress
        )
    except requests.RequestException as err:  # refused, 404, truncated, timed out
        raise DataError(f"{url}: download failed ({_one_line(err)}); nothing was kept") from None
    except ValueError as err:  # the hash does not match: pooch has deleted the download
        raise DataError(f"{url}: {_one_line(err)}") from None
    except OSError as err:
        raise DataError(
            f"{err.filename or cache}: cannot write the download ({err.strerror or _one_line(err)})"
        ) from None
    return Path(path)


def tiny_imagenet(
    dest,
    id_classes,
    ood_classes,
    *,
    url: str | None = None,
    known_hash: str | None = None,
    cache=None,
    progress: bool = True,
    overwrite: bool = False,
    size: int = 64,
    seed: int = 0,
    compress: bool = False,
) -> dict:
    """Download Tiny-ImageNet-200 (once; see fetch) and convert it to ``dest``/{train,val,ood}.npz
    with imagefolder.convert's class choice and options. The options and ``dest`` are
    checked before downloading. Returns convert's summary plus "archive", the cached zip."""
    imagefolder.check_options(size, seed)
    check_new(dest, overwrite)
    archive = fetch(url, known_hash, cache, progress)
    summary = imagefolder.convert(
        archive,
        dest,
        id_classes,
        ood_classes,
        overwrite=overwrite,
        size=size,
        compress=compress,
        seed=seed,
        progress=progress,
    )
    return {**summary, "archive": str(archive)}

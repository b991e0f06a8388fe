"""Downloads: Tiny-ImageNet-200's zip, fetched once into a cache with pooch and
checked against its published hash, then converted to the course format by
selfsup.imagefolder in the same step (the zip is read in place, never unpacked).

The URL can point at a mirror (argument, or $SELFSUP_TINYIMAGENET_URL) and the
cache can move ($SELFSUP_CACHE; default the user cache folder, e.g.
~/.cache/selfsup). A download is written to a temporary file in the cache and
kept only when its hash matches, so a truncated or corrupt download leaves
nothing behind, and a cached file that does not match is fetched again. The
download goes to ``<file>.<temporary>.part``, locked until it is in place, so a
download killed at any moment (kill -9, a power cut) leaves a file the next
fetch recognises and removes.
"""

from __future__ import annotations

import fcntl
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


PARTIAL = ".part"  # <file>.<pooch's temporary>.part: a download being written, flock-ed by its writer
_POOCH_TEMPORARY = re.compile(r"tmp\w+")  # tempfile.NamedTemporaryFile's names, which pooch uses


def _new_partial(cache: Path, temporary: str) -> tuple[Path, int]:
    """``<file>.<temporary>.part`` in ``cache``, empty, with the mode the umask gives, and locked:
    (its path, its open descriptor)."""
    path = cache / f"{TINY_IMAGENET_FILE}.{temporary}{PARTIAL}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not removed as stale before we locked it
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_partials(cache: Path) -> None:
    """Remove the partial downloads in ``cache`` that no process is writing (their writer died:
    the OS freed its lock), with pooch's temporary each names. One being written by another
    process is left alone."""
    for path in cache.glob(f"{TINY_IMAGENET_FILE}.*{PARTIAL}"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # locked: a download in progress
            os.close(fd)
            continue
        temporary = path.name[len(TINY_IMAGENET_FILE) + 1 : -len(PARTIAL)]
        if _POOCH_TEMPORARY.fullmatch(temporary):
            (cache / temporary).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        os.close(fd)


class _IntoPartial:
    """A pooch downloader that streams into a locked ``<file>.<temporary>.part`` in the cache
    rather than into pooch's anonymous temporary, then links it as that temporary, which pooch
    checks against the hash and moves into place. The partial, and its lock, stay until fetch
    calls release(): a download killed at any moment (kill -9, a power cut) leaves a named,
    unlocked partial that the next fetch removes with the temporary it names."""

    def __init__(self, inner, cache: Path):
        self.inner, self.cache, self.held = inner, cache, None

    def __call__(self, url, output_file, pooch_, check_only=False):
        temporary = Path(output_file)
        temporary.unlink()  # pooch's, empty, made an instant ago; the partial names it
        path, fd = self.held = _new_partial(self.cache, temporary.name)
        with os.fdopen(os.dup(fd), "w+b") as f:  # the lock stays with fd
            self.inner(url, f, pooch_)
        os.link(path, temporary)

    def release(self) -> None:
        if self.held:
            path, fd = self.held
            path.unlink(missing_ok=True)
            os.close(fd)
            self.held = None


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
    remove_stale_partials(cache)
    inner = (
        pooch.HTTPDownloader(progressbar=progress, chunk_size=1 << 20)
        if url.startswith("http")
        else pooch.FTPDownloader(progressbar=progress)
    )
    downloader = _IntoPartial(inner, cache)
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
    finally:
        downloader.release()
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

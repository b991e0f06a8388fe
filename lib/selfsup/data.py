"""The course dataset format: reading, checking and writing ``train.npz``,
``val.npz`` and ``ood.npz``, and the course's OOD probe split. Image trees and
their conversion live in selfsup.imagefolder, the synthetic demo set in
selfsup.demo_data; both write through this module.

Course format, one ``.npz`` per split:

    images       (N, H, W, 3) uint8
    labels       (N,)         integer, in [0, K)
    class_names  (K,)         str, optional; K distinct names

A dataset is a folder holding ``train.npz`` and ``val.npz`` (same classes) and
optionally ``ood.npz`` (its own, disjoint classes). Files are always read with
``allow_pickle=False``, so a data file can never run code. Every problem with
an input raises :class:`DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "ood")
OOD_MIN_IMAGES = 5  # ood_split's probe-test part is int(0.2 * n) images: none below 5
_MAX_UNNAMED_CLASSES = 100_000  # guards against inventing a billion names for a stray label


class DataError(ValueError):
    """A bad data file, folder or class list; the one-line message names which."""


@dataclass
class Split:
    """One split: ``images`` (N, H, W, 3) uint8, ``labels`` (N,) int64 in [0, K),
    ``class_names`` K names, ``source`` the file or folder it came from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Dataset:
    """``train`` and ``val`` share classes; ``ood`` (or None) has its own, disjoint classes."""

    train: Split
    val: Split
    ood: Split | None = None


# --------------------------------------------------------------------------- course NPZ


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_arrays(images, labels, class_names, where: str) -> None:
    """Raise DataError unless the arrays make a valid split; ``where`` names the file."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: 'images' has dtype {images.dtype}; expected uint8")
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 1:
        raise DataError(f"{where}: 'images' has shape {images.shape}; expected (N, H, W, 3)")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: 'labels' has dtype {labels.dtype}; expected integers")
    if labels.ndim != 1:
        raise DataError(f"{where}: 'labels' has shape {labels.shape}; expected (N,)")
    if len(images) != len(labels):
        raise DataError(
            f"{where}: 'images' has {len(images)} entries but 'labels' has {len(labels)}; expected the same N"
        )
    if len(labels) == 0:
        raise DataError(f"{where}: 'images' and 'labels' are empty; expected at least one image")
    if labels.min() < 0:
        raise DataError(f"{where}: 'labels' has negative value {labels.min()}; expected labels in [0, K)")
    if class_names is None:
        if labels.max() >= _MAX_UNNAMED_CLASSES:
            raise DataError(
                f"{where}: 'labels' reach {labels.max()} and there is no 'class_names'; expected labels 0..K-1"
            )
        return
    if class_names.ndim != 1 or class_names.dtype.kind not in "US" or len(class_names) == 0:
        raise DataError(
            f"{where}: 'class_names' has dtype {class_names.dtype} and shape {class_names.shape}; "
            "expected a non-empty 1-D array of strings"
        )
    if labels.max() >= len(class_names):
        raise DataError(
            f"{where}: 'labels' reach {labels.max()} but 'class_names' has {len(class_names)} names; "
            f"expected labels in [0, {len(class_names)})"
        )
    first: dict = {}
    for i, name in enumerate(class_names.tolist()):
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if not text.strip() or not text.isprintable():  # a name is one line of visible text: tables, captions, CSV
            raise DataError(
                f"{where}: 'class_names' has {name!r} at {i}; expected one line of printable text (no newline, "
                "tab or other control character, not blank)"
            )
        if name in first:
            raise DataError(
                f"{where}: 'class_names' has {name!r} twice (at {first[name]} and {i}); expected K distinct names"
            )
        first[name] = i


def _names(class_names: np.ndarray) -> list[str]:
    if class_names.dtype.kind == "S":
        return [b.decode("utf-8", "replace") for b in class_names.tolist()]
    return [str(s) for s in class_names.tolist()]


def _check_declared(archive, key: str, where: str) -> None:
    """DataError unless the .npy header of ``key`` declares an array that its zip entry holds and
    that fits in memory: numpy allocates what the header declares before reading a byte."""
    name = key + ".npy"
    if name not in archive.zip.namelist():
        return
    info = archive.zip.getinfo(name)
    try:
        with archive.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            header = f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{where}: key '{key}' is not a readable .npy array ({_one_line(err)})") from None
    if dtype.hasobject:
        return  # refused as pickled when read
    declared, held = math.prod(shape) * dtype.itemsize, info.file_size - header
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if declared > held:
        raise DataError(
            f"{where}: key '{key}' declares a {shape} {dtype} array ({declared:,} bytes) but holds "
            f"{max(held, 0):,} bytes; a truncated or crafted file"
        )
    if declared > memory:
        raise DataError(
            f"{where}: key '{key}' declares a {shape} {dtype} array of {declared / 2**30:,.1f} GiB, more "
            f"than this machine's {memory / 2**30:,.1f} GiB of memory"
        )


def _load(path) -> tuple[Split, bool]:
    """Load and validate one course file; also say whether it had class_names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a course .npz with 'images' and 'labels'")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        # allow_pickle=False reports any non-numpy file as "pickled data": say what it really is.
        why = "neither a zip archive nor a .npy file" if "pickle" in str(err) else _one_line(err)
        raise DataError(f"{path}: not a valid .npz archive ({why})") from None
    if not hasattr(archive, "files"):  # np.load returned a bare .npy array
        raise DataError(f"{path}: is a single .npy array; expected an .npz archive with 'images' and 'labels'")
    arrays = {}
    with archive:
        for key in ("images", "labels", "class_names"):
            if key not in archive.files:
                if key == "class_names":
                    continue
                raise DataError(
                    f"{path}: missing key '{key}' (found: {', '.join(archive.files) or 'none'}); "
                    "expected 'images' and 'labels'"
                )
            _check_declared(archive, key, str(path))
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "pickle" not in str(err):  # numpy's "EOF: reading array data": fewer bytes than declared
                    raise DataError(f"{path}: key '{key}' cannot be read ({_one_line(err)})") from None
                raise DataError(  # object arrays need pickle, which we never allow
                    f"{path}: key '{key}' holds Python objects (pickled); expected a plain numeric or string array"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(f"{path}: key '{key}' cannot be read ({_one_line(err)})") from None
            if not isinstance(arrays[key], np.ndarray):  # an entry that is not .npy: numpy hands back its bytes
                raise DataError(f"{path}: key '{key}' is not a .npy array; expected a numeric or string array")
    images, labels, names = arrays["images"], arrays["labels"], arrays.get("class_names")
    _check_arrays(images, labels, names, str(path))
    named = names is not None
    class_names = _names(names) if named else [str(i) for i in range(int(labels.max()) + 1)]
    return Split(images, labels.astype(np.int64), class_names, str(path)), named


def load_npz(path) -> Split:
    """Load one course file: ``images`` (N, H, W, 3) uint8, ``labels`` (N,) int64.

    Without ``class_names`` in the file the names are "0", "1", ... up to the
    largest label. Raises DataError (one line naming the file and key) on any problem.
    """
    return _load(path)[0]


def _temp_beside(path: Path) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` next to ``path`` with the mode the user's
    umask gives (os.open applies it; mkstemp would make it 0600 for good)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _write_split(split: Split, path: Path, compress: bool) -> None:
    names = np.asarray(split.class_names, dtype=str)
    save = np.savez_compressed if compress else np.savez
    with open(path, "wb") as f:
        save(f, images=split.images, labels=np.asarray(split.labels, dtype=np.int64), class_names=names)


def save_npz(split: Split, path, compress: bool = False) -> None:
    """Write ``split`` in course format, atomically: a temporary file in the same
    folder is renamed over ``path``, so readers never see half a file. The file
    gets the mode the umask gives (0644 under umask 022). ``compress`` uses
    np.savez_compressed: smaller to move around, read back the same way."""
    path = Path(path)
    _save_all({path: split}, path.parent, overwrite=True, compress=compress)


def save_dataset(splits: dict, folder, overwrite: bool = False, compress: bool = False) -> list[Path]:
    """Write ``splits`` ({"train": Split, "val": Split, "ood": Split or None}) as
    ``folder``/<name>.npz, all or nothing: every split is checked, then written to
    a temporary file, and only when all are written are they renamed into place.
    On any error the temporaries, and the folders this call created, are removed.
    A None split removes a stale <name>.npz (it would not match the others).
    Existing files are only replaced with ``overwrite``. Returns the paths written."""
    folder = Path(folder)
    return _save_all({folder / f"{name}.npz": split for name, split in splits.items()}, folder, overwrite, compress)


def check_new(folder, overwrite: bool = False) -> None:
    """Raise DataError unless a dataset can be written into ``folder``: it is not a
    file, and holds no train/val/ood.npz unless ``overwrite``. Long conversions and
    downloads call it first, so they fail before the work, not after."""
    folder = Path(folder)
    _check_targets([folder / f"{name}.npz" for name in SPLITS], folder, overwrite)


def _check_targets(paths, folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise DataError(
            f"{folder}: is a file; expected a folder (or a new path) to write {', '.join(p.name for p in paths)} into"
        )
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists; pass overwrite=True (--overwrite) to replace it")


def _save_all(targets: dict, folder: Path, overwrite: bool, compress: bool) -> list[Path]:
    for path, split in targets.items():
        if split is not None:
            _check_arrays(
                np.asarray(split.images), np.asarray(split.labels), np.asarray(split.class_names, dtype=str), str(path)
            )
    _check_targets(list(targets), folder, overwrite)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    temps: dict = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, split in targets.items():
            if split is not None:
                temps[path] = _temp_beside(path)
                _write_split(split, temps[path], compress)
        for path, tmp in temps.items():
            os.replace(tmp, path)
        for path, split in targets.items():
            if split is None:
                path.unlink(missing_ok=True)
    except BaseException as err:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for p in created:  # only the folders this call made, and only while empty
            try:
                p.rmdir()
            except OSError:
                break
        if isinstance(err, OSError):
            raise DataError(f"{err.filename or folder}: cannot write ({err.strerror or _one_line(err)})") from None
        raise
    return list(temps)


def load_dataset(folder) -> Dataset:
    """Load ``folder``/train.npz, val.npz (required) and ood.npz (optional).

    Checks that all splits have the same image size and that val uses train's
    classes; a split without ``class_names`` takes the other's names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: folder not found; expected a folder with train.npz and val.npz (and optionally ood.npz)"
        )
    train, train_named = _load(folder / "train.npz")
    val, val_named = _load(folder / "val.npz")
    ood = _load(folder / "ood.npz")[0] if (folder / "ood.npz").exists() else None

    for split in (val, ood):
        if split is not None and split.images.shape[1:] != train.images.shape[1:]:
            h, w = split.images.shape[1:3]
            raise DataError(
                f"{split.source}: 'images' are {h}x{w} but train.npz's are "
                f"{train.images.shape[1]}x{train.images.shape[2]}; expected one image size for all splits"
            )

    if train_named and val_named and train.class_names != val.class_names:
        i = next(
            (i for i, (a, b) in enumerate(zip(val.class_names, train.class_names)) if a != b),
            min(len(val.class_names), len(train.class_names)),
        )
        raise DataError(
            f"{val.source}: 'class_names' differ from train.npz's ({len(val.class_names)} vs "
            f"{len(train.class_names)} names, first at index {i}); expected train's classes in its order"
        )
    # One named list wins; unnamed labels must fit inside it.
    names, other = (val.class_names, train) if val_named and not train_named else (train.class_names, val)
    if other.labels.max() >= len(names):
        raise DataError(
            f"{other.source}: 'labels' reach {other.labels.max()} but the dataset has {len(names)} "
            "classes; expected val to use train's classes"
        )
    train.class_names = val.class_names = list(names)
    return Dataset(train, val, ood)


def describe(ds: Dataset) -> str:
    """A few lines: per split its size, image size and classes."""
    lines = []
    for name in SPLITS:
        split = getattr(ds, name)
        if split is None:
            lines.append(f"{name:<5}  (none)")
            continue
        counts = np.bincount(split.labels, minlength=split.num_classes)
        per_class = (
            f"{counts.min()} per class" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()} per class"
        )
        shown = ", ".join(split.class_names[:10]) + (", ..." if split.num_classes > 10 else "")
        lines.append(
            f"{name:<5}  {len(split):>6} images {split.images.shape[1]}x{split.images.shape[2]}, "
            f"{split.num_classes} classes, {per_class}: {shown}"
        )
        if name == "ood" and len(split) < OOD_MIN_IMAGES:
            lines.append(
                f"       too few for the OOD protocol: its 80/20 split needs at least {OOD_MIN_IMAGES} images; "
                "eval skips it"
            )
    return "\n".join(lines)


def fingerprint(split: Split) -> str:
    """Short content hash of a split (images, labels, class names): identifies the data a run saw.
    Hashes every byte (about 1 s per GB), so a changed image is never mistaken for the old data."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((split.images.shape, split.class_names)).encode())
    h.update(np.ascontiguousarray(split.images).data)
    h.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
    return h.hexdigest()


def ood_split(n: int) -> np.ndarray:
    """The course's OOD protocol: (n,) bool mask, True = probe-train (~80%),
    False = probe-test (~20%), from a fixed permutation (seed 42). Below OOD_MIN_IMAGES
    images the probe-test part is empty."""
    return np.random.RandomState(42).permutation(n) >= int(0.2 * n)

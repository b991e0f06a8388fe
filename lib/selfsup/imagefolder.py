"""Image trees to the course format: ImageFolder and Tiny-ImageNet-200 trees, as a
folder or a .zip, decoded to uint8 arrays; choosing ID and OOD classes; and
:func:`convert`, which writes a course dataset through selfsup.data.

Layouts recognised (hidden files and __MACOSX/ are ignored, and a single
wrapping folder such as ``cifar10/`` or ``tiny-imagenet-200/`` is looked into):

    tinyimagenet          wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
                          val/images/ + val/val_annotations.txt
    imagefolder-trainval  train/<class>/<image> and a held-out val/, valid/,
                          validation/ or test/ with <class>/<image> (the first
                          of these, in that order, that holds train's classes)
    imagefolder           <class>/<image>, or train/<class>/<image> with no
                          labelled held-out folder: each ID class is split 90/10

Images are .jpg, .jpeg or .png in any case, searched recursively below a class
folder (like torchvision's ImageFolder, so <wnid>/images/ works).
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from .data import DataError, Split, _one_line, check_new, save_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # matched case-insensitively (Tiny ImageNet uses .JPEG)
HELD_OUT = ("val", "valid", "validation", "test")  # tried in this order beside train/
_IGNORED = {"__MACOSX"}  # macOS zips; and any name starting with "."
_MAX_WRAPPERS = 3  # how many single wrapping folders are looked into
_PROGRESS_DELAY_S = 1.0  # a bar only for reads that take longer
_READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error)


class Source:
    """The files of a folder or a .zip, as sorted relative POSIX paths (``files``).
    ``open(rel)`` gives something PIL can open; ``where(rel)`` names a file in messages."""

    def __init__(self, path):
        self.path = Path(path)
        self._zip = None
        if self.path.is_dir():
            files = []
            for top, dirs, names in os.walk(self.path):
                dirs[:] = [d for d in dirs if not _hidden(d)]
                rel = Path(top).relative_to(self.path).as_posix()
                files += [n if rel == "." else f"{rel}/{n}" for n in names]
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataError(
                    f"{self.path}: not a readable .zip ({_one_line(err)}); expected a folder or a "
                    ".zip holding a Tiny-ImageNet-200 or ImageFolder tree"
                ) from None
            files = [n for n in self._zip.namelist() if not n.endswith("/")]
            absolute = next((n for n in files if n.startswith("/")), None)
            if absolute is not None:  # its first folder would be "": one class named ""
                self._zip.close()
                raise DataError(
                    f"{self.path}: entry {absolute!r} has an absolute path; expected paths relative to the "
                    "archive (zip the tree from the folder above it)"
                )
        else:
            raise DataError(
                f"{self.path}: not found; expected a folder or a .zip holding a Tiny-ImageNet-200 or ImageFolder tree"
            )
        self.files = sorted(f for f in files if not any(_hidden(part) for part in f.split("/")))

    def open(self, rel: str):
        return io.BytesIO(self._zip.read(rel)) if self._zip else self.path / rel

    def read_text(self, rel: str) -> str:
        try:
            raw = self._zip.read(rel) if self._zip else (self.path / rel).read_bytes()
        except _READ_ERRORS as err:
            raise DataError(f"{self.where(rel)}: cannot read ({_one_line(err)})") from None
        return raw.decode("utf-8", "replace")

    def where(self, rel: str = "") -> str:
        return f"{self.path}/{rel}" if rel else str(self.path)

    def close(self) -> None:
        if self._zip:
            self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED


def _under(files: list[str], prefix: str) -> list[str]:
    """The files below ``prefix`` ("a/b/"), relative to it."""
    n = len(prefix)
    return [f[n:] for f in files if f.startswith(prefix)]


def _by_class(files: list[str]) -> dict[str, list[str]]:
    """First folder -> the image files below it (relative paths, sorted); top-level files are not in a class."""
    groups: dict[str, list[str]] = {}
    for f in files:
        head, sep, _ = f.partition("/")
        if sep and f.lower().endswith(IMAGE_SUFFIXES):
            groups.setdefault(head, []).append(f)
    return groups


@dataclass
class Layout:
    """What a source holds: ``kind`` (see the module docstring), ``root`` the
    prefix of the tree inside the source ("" or "cifar10/"), ``train`` the prefix
    of the class folders, ``held_out`` the held-out folder's name or None,
    ``classes`` the class ids on offer, ``groups`` class -> image files."""

    kind: str
    root: str
    train: str
    held_out: str | None
    classes: list[str]
    groups: dict = field(repr=False, default_factory=dict)

    def describe(self, source: Source) -> str:
        at = source.where(self.root.rstrip("/"))
        if self.kind == "tinyimagenet":
            return f"{at}: Tiny-ImageNet-200, {len(self.classes)} classes (ID val and OOD from val/)"
        if self.held_out:
            return (
                f"{at}: ImageFolder, {len(self.classes)} classes in train/, held-out split from "
                f"{self.held_out}/ (ID val and OOD)"
            )
        inside = "train/" if self.train else "class folders"
        return (
            f"{at}: ImageFolder, {len(self.classes)} classes in {inside}, each ID class split 90/10 into train and val"
        )


def find_layout(source: Source) -> Layout:
    """Recognise the tree in ``source`` (see the module docstring); DataError if none."""
    root = ""
    for _ in range(_MAX_WRAPPERS + 1):
        files = _under(source.files, root)
        top_dirs = sorted({f.split("/")[0] for f in files if "/" in f})
        top_files = [f for f in files if "/" not in f]
        if "wnids.txt" in top_files or "val/val_annotations.txt" in files:
            train = _by_class(_under(files, "train/"))
            if "wnids.txt" in top_files:
                classes = [w for w in source.read_text(root + "wnids.txt").split() if w.strip()]
            else:
                classes = sorted(train)
            return Layout("tinyimagenet", root, root + "train/", None, classes, train)
        train = _by_class(_under(files, "train/")) if "train" in top_dirs else {}
        if train:
            for name in HELD_OUT:
                held = _by_class(_under(files, f"{name}/")) if name in top_dirs else {}
                if set(held) & set(train):
                    return Layout("imagefolder-trainval", root, root + "train/", name, sorted(train), train)
            return Layout("imagefolder", root, root + "train/", None, sorted(train), train)
        groups = _by_class(files)
        wrapper = len(top_dirs) == 1 and not any(f.lower().endswith(IMAGE_SUFFIXES) for f in top_files)
        if wrapper and not any(f.count("/") == 1 for f in groups.get(top_dirs[0], [])):
            root += top_dirs[0] + "/"  # one folder holding folders: look inside
            continue
        if groups:
            return Layout("imagefolder", root, root, None, sorted(groups), groups)
        break
    raise DataError(
        f"{source.where()}: layout not recognised; expected Tiny-ImageNet-200 (wnids.txt, "
        "train/<wnid>/images, val/val_annotations.txt) or an ImageFolder tree (<class>/<image>, "
        f"optionally under train/ beside {'/, '.join(HELD_OUT)}/), possibly in one wrapping folder"
    )


# --------------------------------------------------------------------------- decoding


def check_options(size, seed) -> None:
    """Raise DataError unless ``size`` (pixels) and ``seed`` (ID draws; OOD uses seed + 1) are usable."""
    _check_size(size)
    _check_seed(seed, 2**32 - 1)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"image size {size!r} (--size): expected a positive whole number of pixels, e.g. 64")
    return int(size)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit greyscale ("I;16*"; "I" from a PNG in older Pillow) is
    scaled by 255/65535 first: PIL's convert clips it, so a full-range image came out white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img, np.float64) / 257), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _decode(
    source: Source, rels: list[str], labels: list[int], class_names: list[str], size: int, what: str, progress: bool
) -> Split:
    """Decode ``rels`` to (N, size, size, 3) uint8; non-square or other-sized
    images are centre-cropped to a square and resized (bicubic)."""
    size = _check_size(size)
    try:
        images = np.empty((len(rels), size, size, 3), np.uint8)  # filled in place: no second copy of a big set
    except MemoryError:
        raise DataError(
            f"{source.where()}: {len(rels)} images of {size}x{size} need "
            f"{len(rels) * size * size * 3 / 1e9:.1f} GB of memory; expected a smaller --size"
        ) from None
    bar = tqdm(rels, desc=what, unit="img", file=sys.stderr, disable=not progress, delay=_PROGRESS_DELAY_S)
    for i, rel in enumerate(bar):
        try:
            with Image.open(source.open(rel)) as img:
                img = _to_rgb(img)
                if img.size != (size, size):
                    img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
                images[i] = np.asarray(img)
        except (*_READ_ERRORS, Image.DecompressionBombError) as err:
            raise DataError(f"{source.where(rel)}: cannot read image ({_one_line(err)})") from None
    return Split(images, np.asarray(labels, np.int64), list(class_names), source.where())


def _load_classes(
    source: Source,
    base: str,
    groups: dict,
    classes: list[str],
    size: int,
    what: str,
    progress: bool,
    names: list[str] | None = None,
) -> Split:
    """Every image of each class in ``groups`` (files relative to ``base``), labelled by position in ``classes``."""
    rels, labels = [], []
    for label, cls in enumerate(classes):
        found = groups.get(cls, [])
        if not found:
            raise DataError(
                f"{source.where(base + cls)}: no images for class '{cls}'; expected {', '.join(IMAGE_SUFFIXES)} files"
            )
        rels += [base + f for f in found]
        labels += [label] * len(found)
    return _decode(source, rels, labels, names or classes, size, what, progress)


def load_imagefolder(src, size: int = 64, progress: bool = False) -> Split:
    """Every image of an ImageFolder tree (a folder or .zip; for a tree with
    train/, the train/ part), classes sorted by folder name. Returns images (N, size, size, 3) uint8."""
    with Source(src) as source:
        layout = find_layout(source)
        return _load_classes(source, layout.train, layout.groups, layout.classes, size, "images", progress)


def _tiny_names(source: Source, root: str, wnids: list[str]) -> list[str]:
    """Human names from words.txt ("wnid<TAB>goldfish, Carassius auratus" -> "goldfish"); wnid if absent.
    A first name shared by two classes (ImageNet has two "crane"s) gets its wnid: "crane (n02012849)"."""
    words = {}
    if root + "words.txt" in source.files:
        for line in source.read_text(root + "words.txt").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


def _tiny_val_files(source: Source, root: str) -> dict[str, list[str]]:
    """wnid -> sorted val image files relative to ``root`` + "val/", from val_annotations.txt
    (filename, wnid, bbox...) or, where a script has already sorted val/ into <wnid>/ folders, from those."""
    ann = root + "val/val_annotations.txt"
    if ann not in source.files:
        by_class = _by_class(_under(source.files, root + "val/"))
        if not by_class:
            raise DataError(
                f"{source.where(ann)}: file not found; expected Tiny ImageNet's val annotations "
                "(filename<TAB>wnid<TAB>bbox) or val/<wnid>/ folders"
            )
        return by_class
    by_class = {}
    for lineno, line in enumerate(source.read_text(ann).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{source.where(ann)}:{lineno}: expected 'filename<TAB>wnid<TAB>...', got {line[:60]!r}")
        by_class.setdefault(fields[1].strip(), []).append("images/" + fields[0].strip())
    return {w: sorted(f) for w, f in by_class.items()}


def _load_tiny(source: Source, layout: Layout, split: str, classes: list[str], size: int, progress: bool) -> Split:
    names = _tiny_names(source, layout.root, classes)
    if split == "train":
        return _load_classes(source, layout.train, layout.groups, classes, size, "train from train/", progress, names)
    val = _tiny_val_files(source, layout.root)
    missing = [c for c in classes if not val.get(c)]
    if missing:
        raise DataError(f"{source.where(layout.root + 'val')}: no val images for class(es) {', '.join(missing[:5])}")
    return _load_classes(source, layout.root + "val/", val, classes, size, f"{split} from val/", progress, names)


def load_tinyimagenet(src, split: str = "train", classes=None, size: int = 64, progress: bool = False) -> Split:
    """Load Tiny-ImageNet-200's ``train`` (train/<wnid>/images/*.JPEG) or ``val``
    (val/images + val/val_annotations.txt) split for ``classes`` (wnids; default
    all, in wnids.txt order), from the folder or its .zip. Labels follow the order
    of ``classes``; names come from words.txt. Returns images (N, size, size, 3) uint8."""
    if split not in ("train", "val"):
        raise DataError(f"{src}: split '{split}' not supported; expected 'train' or 'val' (test has no labels)")
    with Source(src) as source:
        layout = find_layout(source)
        if layout.kind != "tinyimagenet":
            raise DataError(f"{source.where()}: not Tiny-ImageNet-200; expected wnids.txt and val/val_annotations.txt")
        classes = list(layout.classes if classes is None else classes)
        _check_known(source.where(), layout.classes, classes)
        return _load_tiny(source, layout, split, classes, size, progress)


# --------------------------------------------------------------------------- classes


def _check_known(where, available: list[str], wanted: list[str]) -> None:
    unknown = [c for c in wanted if c not in set(available)]
    if unknown:
        raise DataError(
            f"{where}: unknown class id(s) {', '.join(unknown)}; expected ids from the "
            f"{len(available)} available (e.g. {', '.join(available[:3])})"
        )


def list_classes(src) -> list[str]:
    """Class ids a source tree (folder or .zip) offers: wnids for Tiny ImageNet, folder names otherwise."""
    with Source(src) as source:
        return find_layout(source).classes


def pick_classes(available: list[str], spec: str, exclude=(), seed: int = 0) -> list[str]:
    """Turn a CLI class spec into ids: "a,b,c"; "@file" (one id per line, # comments);
    or an integer N = N ids drawn with RandomState(seed) from ``available`` minus
    ``exclude``, returned in ``available`` order."""
    _check_seed(seed, 2**32)
    spec, excluded = str(spec).strip(), set(exclude)
    pool = [c for c in available if c not in excluded]
    if spec.isdigit():
        n = int(spec)
        if n > len(pool):
            left = f" after excluding {len(excluded)}" if excluded else ""
            raise DataError(f"class spec '{spec}': asked for {n} classes but only {len(pool)} are available{left}")
        chosen = np.random.RandomState(seed).choice(len(pool), n, replace=False)
        return [pool[i] for i in sorted(chosen)]
    if spec.startswith("@"):
        where = Path(spec[1:])
        if not where.is_file():
            raise DataError(f"{where}: class list file not found; expected one class id per line")
        lines = (line.split("#")[0].strip() for line in where.read_text().splitlines())
        ids = [line for line in lines if line]
    else:
        where = f"class spec '{spec}'"
        ids = [s.strip() for s in spec.split(",") if s.strip()]
    _check_known(where, list(available), ids)
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise DataError(f"{where}: class id(s) listed twice: {', '.join(dupes)}")
    both = [c for c in ids if c in excluded]
    if both:
        raise DataError(f"{where}: class id(s) in both ID and OOD: {', '.join(both)}; expected disjoint sets")
    return ids


def _check_seed(seed, end: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < end:
        raise DataError(f"seed {seed!r} (--seed): expected a whole number from 0 to {end - 1}")


def _resolve(classes, available: list[str], exclude, seed: int) -> list[str]:
    """A list of ids as given, or a CLI spec (str or int) through pick_classes."""
    if isinstance(classes, (str, int)):
        return pick_classes(available, str(classes), exclude=exclude, seed=seed)
    return list(classes)


# --------------------------------------------------------------------------- convert


def convert(
    src,
    dest,
    id_classes,
    ood_classes,
    overwrite: bool = False,
    size: int = 64,
    compress: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write ``dest``/{train,val,ood}.npz in course format from a tree (folder or .zip).

    ``id_classes`` / ``ood_classes``: lists of class ids, or specs as the CLI
    takes them (see pick_classes: "a,b", "@file", or a count N drawn with
    ``seed``; OOD with ``seed`` + 1, from the classes not chosen as ID).

    Tiny ImageNet: ID train <- train/, ID val <- val/, OOD <- val/ of the OOD
    classes (50 per class, like the course's ood.npz). ImageFolder with train/
    and a held-out folder: the same with those folders. Otherwise each ID class
    is split 90/10 by sorted file name and OOD takes all images of its classes.
    Everything is read and checked before anything is written, and the three
    files are written all or nothing (selfsup.data.save_dataset); ``compress``
    writes them with np.savez_compressed; ``progress`` shows a bar on stderr
    for reads over a second. Returns a summary; its "description" says which
    layout and folders were used.
    """
    dest = Path(dest)
    check_options(size, seed)
    with Source(src) as source:
        layout = find_layout(source)
        id_classes = _resolve(id_classes, layout.classes, (), seed)
        ood_classes = _resolve(ood_classes, layout.classes, id_classes, seed + 1)
        if not id_classes:
            raise DataError(f"{source.where()}: no ID classes given; expected at least one")
        _check_known(source.where(), layout.classes, id_classes + ood_classes)
        both = [c for c in id_classes if c in set(ood_classes)]
        if both:
            raise DataError(
                f"{source.where()}: class id(s) in both ID and OOD: {', '.join(both)}; expected disjoint sets"
            )
        check_new(dest, overwrite)  # say so now, not after minutes of decoding

        ood = None
        if layout.kind == "tinyimagenet":
            train = _load_tiny(source, layout, "train", id_classes, size, progress)
            val = _load_tiny(source, layout, "val", id_classes, size, progress)
            if ood_classes:
                ood = _load_tiny(source, layout, "ood", ood_classes, size, progress)
        elif layout.held_out:
            base = layout.root + layout.held_out + "/"
            held = _by_class(_under(source.files, base))
            train = _load_classes(source, layout.train, layout.groups, id_classes, size, "train from train/", progress)
            val = _load_classes(source, base, held, id_classes, size, f"val from {layout.held_out}/", progress)
            if ood_classes:
                ood = _load_classes(source, base, held, ood_classes, size, f"ood from {layout.held_out}/", progress)
        else:
            train, val = _split_90_10(source, layout, id_classes, size, progress)
            if ood_classes:
                ood = _load_classes(source, layout.train, layout.groups, ood_classes, size, "ood", progress)
        description = layout.describe(source)

    save_dataset({"train": train, "val": val, "ood": ood}, dest, overwrite=overwrite, compress=compress)
    return {
        "layout": layout.kind,
        "held_out": layout.held_out,
        "description": description,
        "dest": str(dest),
        "image_size": size,
        "train": len(train),
        "val": len(val),
        "ood": len(ood) if ood is not None else 0,
        "id_classes": id_classes,
        "ood_classes": ood_classes,
        "class_names": train.class_names,
        "ood_class_names": ood.class_names if ood is not None else [],
    }


def _split_90_10(source: Source, layout: Layout, classes: list[str], size: int, progress: bool):
    """Each class's sorted files: the first ~90% to train, the last ~10% (at least one) to val."""
    train_files, train_labels, val_files, val_labels = [], [], [], []
    for label, cls in enumerate(classes):
        files = [layout.train + f for f in layout.groups.get(cls, [])]
        if len(files) < 2:
            raise DataError(
                f"{source.where(layout.train + cls)}: {len(files)} image(s) for class '{cls}'; "
                "expected at least 2 to split 90/10"
            )
        n_val = max(1, len(files) // 10)
        train_files += files[:-n_val]
        train_labels += [label] * (len(files) - n_val)
        val_files += files[-n_val:]
        val_labels += [label] * n_val
    return (
        _decode(source, train_files, train_labels, classes, size, "train (90%)", progress),
        _decode(source, val_files, val_labels, classes, size, "val (10%)", progress),
    )

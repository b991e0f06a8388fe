"""Image trees to the course format: ImageFolder and Tiny-ImageNet-200 trees,
decoding their images to uint8 arrays, choosing ID and OOD classes, and
:func:`convert`, which writes a course dataset through selfsup.data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import SPLITS, DataError, Split, _one_line, save_dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # matched case-insensitively (Tiny ImageNet uses .JPEG)


def _image_files(folder: Path) -> list[Path]:
    # Recursive like torchvision's ImageFolder, so Tiny ImageNet's <wnid>/images/ works too.
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _class_dirs(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_images(files: list[Path], labels: list[int], class_names: list[str], size: int, source: str) -> Split:
    """Decode ``files`` to (N, size, size, 3) uint8; non-square or other-sized
    images are centre-cropped to a square and resized (bicubic)."""
    from PIL import Image, ImageOps  # only the tree loaders need PIL

    images = np.empty((len(files), size, size, 3), np.uint8)  # filled in place: no second copy of a big set
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
                images[i] = np.asarray(img)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read image ({_one_line(err)})") from None
    return Split(images, np.asarray(labels, np.int64), list(class_names), source)


def _load_classes(root: Path, classes: list[str], size: int, names: list[str] | None = None) -> Split:
    """Images of ``root``/<class>/ for each class, labelled by position in ``classes``."""
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = _image_files(root / cls) if (root / cls).is_dir() else []
        if not found:
            raise DataError(f"{root / cls}: no images for class '{cls}'; expected {', '.join(IMAGE_SUFFIXES)} files")
        files += found
        labels += [label] * len(found)
    return _read_images(files, labels, names or classes, size, str(root))


def load_imagefolder(root, size: int = 64) -> Split:
    """Load ``root``/<class>/*.{jpg,jpeg,png} (any case, searched recursively);
    classes sorted by folder name. Returns images (N, size, size, 3) uint8."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected an ImageFolder tree <class>/<image>")
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"{root}: no class folders; expected an ImageFolder tree <class>/<image>")
    return _load_classes(root, classes, size)


def _tiny_wnids(root: Path) -> list[str]:
    if (root / "wnids.txt").is_file():
        return [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    return _class_dirs(root / "train") if (root / "train").is_dir() else []


def _tiny_names(root: Path, wnids: list[str]) -> list[str]:
    """Human names from words.txt ("wnid<TAB>goldfish, Carassius auratus" -> "goldfish"); wnid if absent.
    A first name shared by two classes (ImageNet has two "crane"s) gets its wnid: "crane (n02012849)"."""
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


def _tiny_val_files(root: Path) -> dict[str, list[str]]:
    """wnid -> sorted file names, from val/val_annotations.txt (filename, wnid, bbox...)."""
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann}: file not found; expected Tiny ImageNet's val annotations (filename<TAB>wnid<TAB>bbox)")
    by_class: dict[str, list[str]] = {}
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{ann}:{lineno}: expected 'filename<TAB>wnid<TAB>...', got {line[:60]!r}")
        by_class.setdefault(fields[1].strip(), []).append(fields[0].strip())
    return {w: sorted(f) for w, f in by_class.items()}


def _check_known(where, available: list[str], wanted: list[str]) -> None:
    unknown = [c for c in wanted if c not in set(available)]
    if unknown:
        raise DataError(f"{where}: unknown class id(s) {', '.join(unknown)}; expected ids from the "
                        f"{len(available)} available (e.g. {', '.join(available[:3])})")


def load_tinyimagenet(root, split: str = "train", classes=None, size: int = 64) -> Split:
    """Load Tiny-ImageNet-200's ``train`` (train/<wnid>/images/*.JPEG) or ``val``
    (val/images + val/val_annotations.txt) split for ``classes`` (wnids; default
    all, in wnids.txt order). Labels follow the order of ``classes``; names come
    from words.txt. Returns images (N, size, size, 3) uint8."""
    root = Path(root)
    wnids = _tiny_wnids(root)
    classes = list(wnids if classes is None else classes)
    _check_known(root, wnids, classes)
    names = _tiny_names(root, classes)
    if split == "train":
        return _load_classes(root / "train", classes, size, names)  # finds <wnid>/images/*.JPEG recursively
    if split != "val":
        raise DataError(f"{root}: split '{split}' not supported; expected 'train' or 'val' (test has no labels)")
    val_files = _tiny_val_files(root)
    files, labels = [], []
    for label, cls in enumerate(classes):
        if not val_files.get(cls):
            raise DataError(f"{root / 'val' / 'val_annotations.txt'}: no val images for class '{cls}'")
        files += [root / "val" / "images" / f for f in val_files[cls]]
        labels += [label] * len(val_files[cls])
    return _read_images(files, labels, names, size, str(root / "val"))


# --------------------------------------------------------------------------- convert


def _layout(src: Path) -> str:
    if not src.is_dir():
        raise DataError(f"{src}: folder not found; expected a Tiny-ImageNet-200 or ImageFolder tree")
    if (src / "wnids.txt").is_file() or (src / "val" / "val_annotations.txt").is_file():
        return "tinyimagenet"
    if (src / "train").is_dir() and (src / "val").is_dir():
        return "imagefolder-trainval"
    if any(_image_files(src / c) for c in _class_dirs(src)):
        return "imagefolder"
    raise DataError(f"{src}: layout not recognised; expected Tiny-ImageNet-200 (wnids.txt, train/<wnid>/images, "
                    "val/val_annotations.txt) or an ImageFolder tree (<class>/<image>, optionally under train/ and val/)")


def list_classes(src) -> list[str]:
    """Class ids a source tree offers: wnids for Tiny ImageNet, folder names otherwise."""
    src = Path(src)
    layout = _layout(src)
    if layout == "tinyimagenet":
        return _tiny_wnids(src)
    return _class_dirs(src / "train" if layout == "imagefolder-trainval" else src)


def pick_classes(available: list[str], spec: str, exclude=(), seed: int = 0) -> list[str]:
    """Turn a CLI class spec into ids: "a,b,c"; "@file" (one id per line, # comments);
    or an integer N = N ids drawn with RandomState(seed) from ``available`` minus
    ``exclude``, returned in ``available`` order."""
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


def convert(src, dest, id_classes, ood_classes, overwrite: bool = False, size: int = 64,
            compress: bool = False) -> dict:
    """Write ``dest``/{train,val,ood}.npz in course format from a source tree.

    Tiny ImageNet: ID train <- train/, ID val <- val/, OOD <- val/ of the OOD
    classes (50 per class, like the course's ood.npz). ImageFolder with train/
    and val/: the same with those folders. Plain ImageFolder: each ID class is
    split 90/10 by sorted file name; OOD takes all images of its classes.
    Everything is read and checked before anything is written, and the three
    files are written all or nothing (selfsup.data.save_dataset); ``compress``
    writes them with np.savez_compressed. Returns a summary.
    """
    src, dest = Path(src), Path(dest)
    layout = _layout(src)
    available = list_classes(src)
    id_classes, ood_classes = list(id_classes), list(ood_classes)
    if not id_classes:
        raise DataError(f"{src}: no ID classes given; expected at least one")
    _check_known(src, available, id_classes + ood_classes)
    both = [c for c in id_classes if c in set(ood_classes)]
    if both:
        raise DataError(f"{src}: class id(s) in both ID and OOD: {', '.join(both)}; expected disjoint sets")
    targets = {name: dest / f"{name}.npz" for name in SPLITS}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists; pass overwrite=True (--overwrite) to replace it")

    ood = None
    if layout == "tinyimagenet":
        train = load_tinyimagenet(src, "train", id_classes, size)
        val = load_tinyimagenet(src, "val", id_classes, size)
        if ood_classes:
            ood = load_tinyimagenet(src, "val", ood_classes, size)
    elif layout == "imagefolder-trainval":
        train = _load_classes(src / "train", id_classes, size)
        val = _load_classes(src / "val", id_classes, size)
        if ood_classes:
            ood = _load_classes(src / "val", ood_classes, size)
    else:
        train, val = _split_imagefolder(src, id_classes, size)
        if ood_classes:
            ood = _load_classes(src, ood_classes, size)

    save_dataset({"train": train, "val": val, "ood": ood}, dest, overwrite=overwrite, compress=compress)
    return {
        "layout": layout, "dest": str(dest), "image_size": size,
        "train": len(train), "val": len(val), "ood": len(ood) if ood is not None else 0,
        "id_classes": id_classes, "ood_classes": ood_classes,
        "class_names": train.class_names, "ood_class_names": ood.class_names if ood is not None else [],
    }


def _split_imagefolder(root: Path, classes: list[str], size: int) -> tuple[Split, Split]:
    """Each class's sorted files: the first ~90% to train, the last ~10% (at least one) to val."""
    train_files, train_labels, val_files, val_labels = [], [], [], []
    for label, cls in enumerate(classes):
        files = _image_files(root / cls)
        if len(files) < 2:
            raise DataError(f"{root / cls}: {len(files)} image(s) for class '{cls}'; expected at least 2 to split 90/10")
        n_val = max(1, len(files) // 10)
        train_files += files[:-n_val]
        train_labels += [label] * (len(files) - n_val)
        val_files += files[-n_val:]
        val_labels += [label] * n_val
    return (_read_images(train_files, train_labels, classes, size, str(root)),
            _read_images(val_files, val_labels, classes, size, str(root)))

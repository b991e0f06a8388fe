"""Small image trees for the data tests: Tiny-ImageNet-200 and ImageFolder layouts, zipped or not."""

import zipfile

import numpy as np
from PIL import Image

COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 30)]  # one flat colour per class


def save_image(path, colour, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_tiny_tree(root):
    """Tiny-ImageNet-200 layout in ``root``: 4 classes (n01..n04), 3 train and 2 val 64x64 JPEGs each,
    one flat colour per class (COLOURS)."""
    wnids = ["n01", "n02", "n03", "n04"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text(
        "n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tbison\nn03\tice cream, icecream\nn04\tkimono\n"
    )
    annotations = []
    for c, wnid in enumerate(wnids):
        for i in range(3):
            save_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[c])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            save_image(root / "val" / "images" / name, COLOURS[c])
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


def assert_colours(split, colours):
    """Each image's mean colour is its class's colour: labels point at the right images."""
    means = split.images.reshape(len(split), -1, 3).mean(1)
    np.testing.assert_allclose(means, np.array(colours, float)[split.labels], atol=12)


def make_tree(root, parts, size=(16, 16)):
    """parts: {folder: {class: n}}, folder "" for a plain tree; class k gets COLOURS[k] by sorted name."""
    colour = {c: COLOURS[i] for i, c in enumerate(sorted({c for classes in parts.values() for c in classes}))}
    for folder, classes in parts.items():
        for cls, n in classes.items():
            for i in range(n):
                save_image(root / folder / cls / f"{i:02d}.png", colour[cls], size=size)
    return root


def zip_tree(folder, path, extra=()):
    """Zip ``folder`` (its own name as the top folder, like most archives) plus ``extra`` (name, bytes)."""
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, p.relative_to(folder.parent).as_posix())
        for name, payload in extra:
            z.writestr(name, payload)
    return path

"""selfsup.data: course NPZ round-trips and validation, trees -> course format, OOD split, demo data."""

import numpy as np
import pytest
from PIL import Image

from selfsup import data, demo_data
from selfsup.data import DataError, Split


def make_split(n=6, k=3, size=8, names=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % k
    return Split(images, labels, [f"class {i}" for i in range(k)] if names else [str(i) for i in range(k)])


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays(n=6, k=3, size=8):
    s = make_split(n, k, size)
    return dict(images=s.images, labels=s.labels, class_names=np.array(s.class_names))


def write_dataset(folder, train=None, val=None, ood=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in (("train", train), ("val", val), ("ood", ood)):
        if arrays is not None:
            write_npz(folder / f"{name}.npz", **arrays)
    return folder


# ----------------------------------------------------------------------------- NPZ


def test_save_load_round_trip(tmp_path):
    split = make_split()
    path = tmp_path / "sub" / "train.npz"
    data.save_npz(split, path)
    back = data.load_npz(path)
    np.testing.assert_array_equal(back.images, split.images)
    np.testing.assert_array_equal(back.labels, split.labels)
    assert back.labels.dtype == np.int64
    assert back.class_names == split.class_names and back.source == str(path)
    assert len(back) == 6 and back.num_classes == 3
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]  # no temporary left behind


def test_load_without_class_names_invents_them(tmp_path):
    path = write_npz(tmp_path / "x.npz", images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.array([0, 4, 2], np.uint8))
    split = data.load_npz(path)
    assert split.class_names == ["0", "1", "2", "3", "4"]
    assert split.labels.dtype == np.int64


def _bad_file(tmp_path, case):
    """Write one broken course file; return (path, a fragment the message must contain)."""
    path = tmp_path / f"{case}.npz"
    g = good_arrays()
    if case == "missing":
        return path, "not found"
    if case == "garbage":
        path.write_bytes(b"this is not a zip file at all")
        return path, "not a valid .npz"
    if case == "npy":
        with open(path, "wb") as f:
            np.save(f, g["images"])
        return path, ".npy"
    if case == "object":
        return write_npz(path, images=np.array([object()] * 6, dtype=object), labels=g["labels"]), "'images'"
    edits = {
        "no_images": (dict(images=None), "'images'"),
        "no_labels": (dict(labels=None), "'labels'"),
        "float_images": (dict(images=g["images"].astype(np.float32)), "uint8"),
        "rank3_images": (dict(images=g["images"][..., 0]), "(N, H, W, 3)"),
        "rgba_images": (dict(images=np.zeros((6, 8, 8, 4), np.uint8)), "(N, H, W, 3)"),
        "float_labels": (dict(labels=g["labels"].astype(np.float64)), "'labels'"),
        "rank2_labels": (dict(labels=g["labels"][:, None]), "'labels'"),
        "n_mismatch": (dict(labels=g["labels"][:5]), "the same N"),
        "empty": (dict(images=g["images"][:0], labels=g["labels"][:0]), "empty"),
        "negative_label": (dict(labels=np.array([0, 1, -1, 0, 1, 2])), "negative"),
        "label_too_big": (dict(labels=np.array([0, 1, 3, 0, 1, 2])), "'class_names' has 3"),
        "names_2d": (dict(class_names=np.array([["a", "b", "c"]])), "'class_names'"),
        "names_not_str": (dict(class_names=np.arange(3)), "'class_names'"),
    }
    change, fragment = edits[case]
    arrays = {k: v for k, v in {**g, **change}.items() if v is not None}
    return write_npz(path, **arrays), fragment


BAD_FILES = ["missing", "garbage", "npy", "object", "no_images", "no_labels", "float_images", "rank3_images",
             "rgba_images", "float_labels", "rank2_labels", "n_mismatch", "empty", "negative_label",
             "label_too_big", "names_2d", "names_not_str"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_load_npz_rejects_bad_file(tmp_path, case):
    path, fragment = _bad_file(tmp_path, case)
    with pytest.raises(DataError) as err:
        data.load_npz(path)
    message = str(err.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["float_images", "n_mismatch", "label_too_big"])
def test_save_npz_refuses_bad_split_and_writes_nothing(tmp_path, case):
    g = good_arrays()
    split = Split(g["images"], g["labels"], list(g["class_names"]))
    if case == "float_images":
        split.images = split.images.astype(np.float32)
    elif case == "n_mismatch":
        split.labels = split.labels[:5]
    else:
        split.class_names = ["a", "b"]
    with pytest.raises(DataError, match="out.npz"):
        data.save_npz(split, tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- load_dataset


def test_load_dataset_round_trip(tmp_path):
    folder = write_dataset(tmp_path / "ds", good_arrays(12), good_arrays(6), good_arrays(6, k=2))
    ds = data.load_dataset(folder)
    assert (len(ds.train), len(ds.val), len(ds.ood)) == (12, 6, 6)
    assert ds.val.class_names == ds.train.class_names
    assert "train" in data.describe(ds) and "ood" in data.describe(ds)


def test_load_dataset_ood_is_optional_and_names_are_shared(tmp_path):
    val = {k: v for k, v in good_arrays(6, k=2).items() if k != "class_names"}  # val without names
    ds = data.load_dataset(write_dataset(tmp_path, good_arrays(), val))
    assert ds.ood is None
    assert ds.val.class_names == ds.train.class_names == ["class 0", "class 1", "class 2"]


def _bad_dataset(tmp_path, case):
    g = good_arrays()
    if case == "no_folder":
        return tmp_path / "nope", tmp_path / "nope"
    if case == "no_val":
        return write_dataset(tmp_path, g), tmp_path / "val.npz"
    if case == "bad_ood":
        return write_dataset(tmp_path, g, g, dict(g, images=g["images"].astype(np.int16))), tmp_path / "ood.npz"
    if case == "val_size":
        return write_dataset(tmp_path, g, good_arrays(size=16)), tmp_path / "val.npz"
    if case == "ood_size":
        return write_dataset(tmp_path, g, g, good_arrays(size=16)), tmp_path / "ood.npz"
    if case == "val_names":
        return write_dataset(tmp_path, g, dict(g, class_names=np.array(["x", "y", "z"]))), tmp_path / "val.npz"
    if case == "val_more_classes":  # neither file named: val has a class train never saw
        unnamed = {k: v for k, v in g.items() if k != "class_names"}
        val = dict(unnamed, labels=np.array([0, 1, 2, 3, 0, 1]))
        return write_dataset(tmp_path, unnamed, val), tmp_path / "val.npz"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no_folder", "no_val", "bad_ood", "val_size", "ood_size", "val_names",
                                  "val_more_classes"])
def test_load_dataset_rejects(tmp_path, case):
    folder, culprit = _bad_dataset(tmp_path, case)
    with pytest.raises(DataError) as err:
        data.load_dataset(folder)
    assert str(culprit) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- OOD split


@pytest.mark.parametrize("n", [1, 5, 10, 99, 500, 1001])
def test_ood_split_is_the_course_protocol(n):
    mask = data.ood_split(n)
    expected = np.random.RandomState(42).permutation(n) >= int(0.2 * n)
    assert mask.dtype == bool and mask.shape == (n,)
    np.testing.assert_array_equal(mask, expected)
    assert (~mask).sum() == int(0.2 * n)
    if n >= 500:
        assert abs(mask.mean() - 0.8) < 0.01


# ----------------------------------------------------------------------------- demo


def small_demo(dest, seed=0):
    return demo_data.make_demo(dest, seed=seed, train_per_class=6, val_per_class=3, ood_per_class=4)


def test_demo_is_deterministic_and_well_formed(tmp_path):
    a = small_demo(tmp_path / "a")
    small_demo(tmp_path / "b")
    b = data.load_dataset(tmp_path / "b")  # what was written is what was returned
    c = small_demo(tmp_path / "c", seed=1)
    for name in ("train", "val", "ood"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
        np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)
        assert getattr(a, name).class_names == getattr(b, name).class_names
        assert not np.array_equal(getattr(a, name).images, getattr(c, name).images)
    assert a.train.images.shape == (60, 64, 64, 3) and a.train.images.dtype == np.uint8
    assert np.bincount(a.train.labels).tolist() == [6] * 10
    assert np.bincount(a.val.labels).tolist() == [3] * 10
    assert np.bincount(a.ood.labels).tolist() == [4] * 10
    assert len(set(a.train.class_names)) == 10 and len(set(a.ood.class_names)) == 10
    assert not set(a.train.class_names) & set(a.ood.class_names)
    assert a.val.class_names == a.train.class_names
    assert all("+" in name for name in a.train.class_names + a.ood.class_names)


def test_demo_ood_classes_recombine_seen_shapes_and_patterns():
    id_classes, ood_classes = demo_data.demo_classes()
    assert not set(id_classes) & set(ood_classes)
    assert {s for s, _ in ood_classes} <= {s for s, _ in id_classes}
    assert {p for _, p in ood_classes} <= {p for _, p in id_classes}
    with pytest.raises(ValueError):
        demo_data.demo_classes(20, 10)


def test_demo_without_ood(tmp_path):
    ds = demo_data.make_demo(tmp_path, n_id_classes=3, n_ood_classes=0, train_per_class=2, val_per_class=1, size=32)
    assert ds.ood is None and not (tmp_path / "ood.npz").exists()
    assert data.load_dataset(tmp_path).train.images.shape == (6, 32, 32, 3)


# ----------------------------------------------------------------------------- trees


COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 30)]  # one flat colour per class


def save_image(path, colour, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def tiny_tree(tmp_path):
    """Tiny-ImageNet-200 layout: 4 classes, 3 train and 2 val JPEGs each."""
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03", "n04"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tbison\n"
                                    "n03\tice cream, icecream\nn04\tkimono\n")
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


def test_convert_tinyimagenet(tiny_tree, tmp_path):
    dest = tmp_path / "out"
    available = data.list_classes(tiny_tree)
    assert available == ["n01", "n02", "n03", "n04"]
    summary = data.convert(tiny_tree, dest, id_classes=["n03", "n01"], ood_classes=["n04"])
    assert summary["layout"] == "tinyimagenet" and (summary["train"], summary["val"], summary["ood"]) == (6, 4, 2)
    ds = data.load_dataset(dest)
    assert ds.train.class_names == ["ice cream", "goldfish"]  # order of id_classes, first name in words.txt
    assert ds.ood.class_names == ["kimono"]
    assert np.bincount(ds.train.labels).tolist() == [3, 3] and np.bincount(ds.val.labels).tolist() == [2, 2]
    assert ds.train.images.shape == (6, 64, 64, 3)
    assert_colours(ds.train, [COLOURS[2], COLOURS[0]])
    assert_colours(ds.val, [COLOURS[2], COLOURS[0]])
    assert_colours(ds.ood, [COLOURS[3]])


def test_load_tinyimagenet_resizes(tiny_tree):
    split = data.load_tinyimagenet(tiny_tree, "val", ["n02"], size=32)
    assert split.images.shape == (2, 32, 32, 3) and split.class_names == ["bison"]


@pytest.mark.parametrize("case", ["unknown", "overlap", "exists", "layout", "no_id"])
def test_convert_errors_write_nothing(tiny_tree, tmp_path, case):
    dest = tmp_path / "out"
    dest.mkdir()
    kwargs = dict(id_classes=["n01", "n02"], ood_classes=["n03"])
    src, fragment = tiny_tree, None
    if case == "unknown":
        kwargs["ood_classes"], fragment = ["n99"], "n99"
    elif case == "overlap":
        kwargs["ood_classes"], fragment = ["n02", "n03"], "n02"
    elif case == "exists":
        (dest / "val.npz").write_bytes(b"keep me")
        fragment = "val.npz"
    elif case == "layout":
        src = tmp_path / "empty"
        src.mkdir()
        fragment = "not recognised"
    else:
        kwargs["id_classes"], fragment = [], "ID"
    before = sorted(p.name for p in dest.iterdir())
    with pytest.raises(DataError, match=fragment) as err:
        data.convert(src, dest, **kwargs)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == before
    if case == "exists":
        assert (dest / "val.npz").read_bytes() == b"keep me"
        data.convert(src, dest, overwrite=True, **kwargs)  # and overwrite replaces it
        assert len(data.load_dataset(dest).val) == 4


def test_convert_imagefolder_with_train_val(tmp_path):
    src = tmp_path / "tree"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(3):
            save_image(src / "train" / name / f"{i}.png", COLOURS[c], size=(48, 32))  # non-square: crop + resize
        save_image(src / "val" / name / "v.jpg", COLOURS[c])
    assert data.list_classes(src) == ["cat", "dog", "eel"]
    summary = data.convert(src, tmp_path / "out", id_classes=["cat", "eel"], ood_classes=["dog"])
    assert summary["layout"] == "imagefolder-trainval"
    ds = data.load_dataset(tmp_path / "out")
    assert ds.train.class_names == ["cat", "eel"] and ds.ood.class_names == ["dog"]
    assert (len(ds.train), len(ds.val), len(ds.ood)) == (6, 2, 1)
    assert_colours(ds.train, [COLOURS[0], COLOURS[2]])
    assert_colours(ds.ood, [COLOURS[1]])


def test_convert_plain_imagefolder_splits_90_10(tmp_path):
    src = tmp_path / "tree"
    for c, name in enumerate(["a", "b", "c"]):
        for i in range(10 if name != "b" else 3):
            save_image(src / name / f"{i:02d}.jpeg", COLOURS[c], size=(16, 16))
    summary = data.convert(src, tmp_path / "out", id_classes=["a", "b"], ood_classes=["c"], size=16)
    assert summary["layout"] == "imagefolder"
    ds = data.load_dataset(tmp_path / "out")
    assert np.bincount(ds.train.labels).tolist() == [9, 2] and np.bincount(ds.val.labels).tolist() == [1, 1]
    assert len(ds.ood) == 10  # no held-out part exists, so OOD takes all of its classes
    assert_colours(ds.val, [COLOURS[0], COLOURS[1]])
    split = data.load_imagefolder(src, size=16)
    assert split.class_names == ["a", "b", "c"] and len(split) == 23


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "tree" / "a" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        data.load_imagefolder(tmp_path / "tree")


# ----------------------------------------------------------------------------- pick_classes


AVAILABLE = [f"n{i:02d}" for i in range(20)]


def test_pick_classes_forms(tmp_path):
    assert data.pick_classes(AVAILABLE, "n03, n01") == ["n03", "n01"]
    (tmp_path / "ids.txt").write_text("# my classes\nn05\n\nn07  # bison\n")
    assert data.pick_classes(AVAILABLE, f"@{tmp_path / 'ids.txt'}") == ["n05", "n07"]
    ids = data.pick_classes(AVAILABLE, "5")
    assert len(ids) == 5 and ids == sorted(ids) and ids == data.pick_classes(AVAILABLE, "5")
    ood = data.pick_classes(AVAILABLE, "15", exclude=ids)
    assert not set(ood) & set(ids) and len(ood) == 15
    assert data.pick_classes(AVAILABLE, "5", seed=1) != ids


@pytest.mark.parametrize("spec,exclude,fragment", [
    ("n01,n99", (), "n99"),
    ("n01,n01", (), "twice"),
    ("n01,n02", ("n02",), "both ID and OOD"),
    ("21", (), "only 20"),
    ("19", ("n00", "n01"), "only 18"),
    ("@/no/such/file.txt", (), "file.txt"),
])
def test_pick_classes_errors(spec, exclude, fragment):
    with pytest.raises(DataError, match=fragment):
        data.pick_classes(AVAILABLE, spec, exclude=exclude)

"""selfsup.data: course NPZ round-trips and validation, OOD split, demo data."""

import os
import stat
import zipfile

import numpy as np
import pytest

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
        "names_twice": (dict(class_names=np.array(["cat", "dog", "cat"])), "'class_names' has 'cat' twice"),
    }
    change, fragment = edits[case]
    arrays = {k: v for k, v in {**g, **change}.items() if v is not None}
    return write_npz(path, **arrays), fragment


BAD_FILES = [
    "missing",
    "garbage",
    "npy",
    "object",
    "no_images",
    "no_labels",
    "float_images",
    "rank3_images",
    "rgba_images",
    "float_labels",
    "rank2_labels",
    "n_mismatch",
    "empty",
    "negative_label",
    "label_too_big",
    "names_2d",
    "names_not_str",
    "names_twice",
]


@pytest.mark.parametrize("case", BAD_FILES)
def test_load_npz_rejects_bad_file(tmp_path, case):
    path, fragment = _bad_file(tmp_path, case)
    with pytest.raises(DataError) as err:
        data.load_npz(path)
    message = str(err.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def test_an_array_declared_larger_than_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    """A real array larger than this machine's memory does not fit in a test: the machine's memory
    is made to look smaller than a well-formed 1 KB array instead (what the check compares)."""
    g = good_arrays()
    np.savez(tmp_path / "train.npz", **g)
    real = os.sysconf
    monkeypatch.setattr(data.os, "sysconf", lambda name: 0 if name == "SC_PHYS_PAGES" else real(name))
    with pytest.raises(DataError, match=r"key 'images' declares a \(\d+, 8, 8, 3\) uint8 array of 0.0 GiB, more than"):
        data.load_npz(tmp_path / "train.npz")


@pytest.mark.parametrize("case", ["float_images", "n_mismatch", "label_too_big", "names_twice"])
def test_save_npz_refuses_bad_split_and_writes_nothing(tmp_path, case):
    g = good_arrays()
    split = Split(g["images"], g["labels"], list(g["class_names"]))
    if case == "float_images":
        split.images = split.images.astype(np.float32)
    elif case == "n_mismatch":
        split.labels = split.labels[:5]
    elif case == "names_twice":
        split.class_names = ["a", "b", "a"]
    else:
        split.class_names = ["a", "b"]
    with pytest.raises(DataError, match="out.npz"):
        data.save_npz(split, tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_saved_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        data.save_npz(make_split(), tmp_path / "train.npz")
        data.save_dataset({"train": make_split(), "val": make_split()}, tmp_path / "ds")
    finally:
        os.umask(old)
    for path in (tmp_path / "train.npz", tmp_path / "ds" / "train.npz", tmp_path / "ds" / "val.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_compressed_files_are_smaller_and_load_the_same(tmp_path):
    split = make_split(n=40, size=16)
    split.images[:] = split.images[:, :1, :1]  # flat images: compressible, as photos' npz are in part
    data.save_npz(split, tmp_path / "plain.npz")
    data.save_npz(split, tmp_path / "small.npz", compress=True)
    with zipfile.ZipFile(tmp_path / "small.npz") as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "plain.npz").stat().st_size / 5
    a, b = data.load_npz(tmp_path / "plain.npz"), data.load_npz(tmp_path / "small.npz")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names


def test_save_dataset_writes_all_or_nothing(tmp_path, monkeypatch):
    good, bad = make_split(), make_split()
    bad.class_names = ["a", "b"]  # labels reach 2
    dest = tmp_path / "new" / "ds"
    with pytest.raises(DataError, match="val.npz"):  # a bad split: checked before anything is written
        data.save_dataset({"train": good, "val": bad}, dest)
    assert list(tmp_path.iterdir()) == []

    real, calls = data._write_split, []

    def disk_full_on_second(split, path, compress):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        real(split, path, compress)

    monkeypatch.setattr(data, "_write_split", disk_full_on_second)
    with pytest.raises(DataError, match="No space left") as err:
        data.save_dataset({"train": good, "val": good, "ood": good}, dest)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no temporaries, and the folders it made are gone again

    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "train.npz").write_bytes(b"keep")
    calls.clear()
    with pytest.raises(DataError):
        data.save_dataset({"train": good, "val": good}, existing, overwrite=True)
    assert [p.name for p in existing.iterdir()] == ["train.npz"] and (existing / "train.npz").read_bytes() == b"keep"


def test_save_dataset_refuses_a_file_and_existing_splits_and_drops_a_stale_ood(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        data.save_dataset({"train": make_split(), "val": make_split()}, tmp_path / "file")
    ds = tmp_path / "ds"
    data.save_dataset({"train": make_split(), "val": make_split(), "ood": make_split()}, ds)
    with pytest.raises(DataError, match="already exists"):
        data.save_dataset({"train": make_split(), "val": make_split()}, ds)
    data.save_dataset({"train": make_split(), "val": make_split(), "ood": None}, ds, overwrite=True)
    assert sorted(p.name for p in ds.iterdir()) == ["train.npz", "val.npz"]
    assert data.load_dataset(ds).ood is None


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


@pytest.mark.parametrize(
    "case", ["no_folder", "no_val", "bad_ood", "val_size", "ood_size", "val_names", "val_more_classes"]
)
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
    size = demo_data.DEMO_DEFAULTS["size"]
    assert a.train.images.shape == (60, size, size, 3) and a.train.images.dtype == np.uint8
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


def test_demo_draws_dark_objects_on_a_light_ground(tmp_path):
    """One polarity: no augmentation turns light-on-dark into dark-on-light, so mixing both would
    split every class in two. A disc's centre (near the frame's) is darker than the frame's corners
    (background), image by image."""
    ds = demo_data.make_demo(tmp_path, n_id_classes=2, n_ood_classes=0, train_per_class=20, val_per_class=1)
    x = ds.train.images.astype(float).mean(-1)  # (N, H, W) grey levels
    h = x.shape[1]
    centre = x[:, h // 2 - 1 : h // 2 + 1, h // 2 - 1 : h // 2 + 1].mean((1, 2))
    corners = np.stack([x[:, :2, :2], x[:, :2, -2:], x[:, -2:, :2], x[:, -2:, -2:]], 1).mean((1, 2, 3))
    assert ds.train.class_names == ["disc+solid", "disc+checker"]
    assert (centre < corners).all()


def test_demo_without_ood(tmp_path):
    ds = demo_data.make_demo(tmp_path, n_id_classes=3, n_ood_classes=0, train_per_class=2, val_per_class=1, size=32)
    assert ds.ood is None and not (tmp_path / "ood.npz").exists()
    assert data.load_dataset(tmp_path).train.images.shape == (6, 32, 32, 3)

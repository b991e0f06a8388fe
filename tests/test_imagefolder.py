"""selfsup.imagefolder: ImageFolder and Tiny-ImageNet trees -> course format, class picking."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from image_trees import COLOURS, assert_colours, make_tiny_tree, make_tree, save_image, zip_tree
from selfsup import data, imagefolder
from selfsup.data import DataError


@pytest.fixture
def tiny_tree(tmp_path):
    return make_tiny_tree(tmp_path / "tiny-imagenet-200")


def test_convert_tinyimagenet(tiny_tree, tmp_path):
    dest = tmp_path / "out"
    available = imagefolder.list_classes(tiny_tree)
    assert available == ["n01", "n02", "n03", "n04"]
    summary = imagefolder.convert(tiny_tree, dest, id_classes=["n03", "n01"], ood_classes=["n04"])
    assert summary["layout"] == "tinyimagenet" and (summary["train"], summary["val"], summary["ood"]) == (6, 4, 2)
    ds = data.load_dataset(dest)
    assert ds.train.class_names == ["ice cream", "goldfish"]  # order of id_classes, first name in words.txt
    assert ds.ood.class_names == ["kimono"]
    assert np.bincount(ds.train.labels).tolist() == [3, 3] and np.bincount(ds.val.labels).tolist() == [2, 2]
    assert ds.train.images.shape == (6, 64, 64, 3)
    assert_colours(ds.train, [COLOURS[2], COLOURS[0]])
    assert_colours(ds.val, [COLOURS[2], COLOURS[0]])
    assert_colours(ds.ood, [COLOURS[3]])


def test_tinyimagenet_names_shared_by_two_classes_get_their_wnid(tiny_tree, tmp_path):
    (tiny_tree / "words.txt").write_text("n01\tcrane\nn02\tbison\nn03\tcrane, derrick\nn04\tkimono\n")
    imagefolder.convert(tiny_tree, tmp_path / "out", id_classes=["n01", "n02", "n03"], ood_classes=[])
    assert data.load_dataset(tmp_path / "out").train.class_names == ["crane (n01)", "bison", "crane (n03)"]


def test_load_tinyimagenet_resizes(tiny_tree):
    split = imagefolder.load_tinyimagenet(tiny_tree, "val", ["n02"], size=32)
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
        imagefolder.convert(src, dest, **kwargs)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == before
    if case == "exists":
        assert (dest / "val.npz").read_bytes() == b"keep me"
        imagefolder.convert(src, dest, overwrite=True, **kwargs)  # and overwrite replaces it
        assert len(data.load_dataset(dest).val) == 4


def test_convert_imagefolder_with_train_val(tmp_path):
    src = tmp_path / "tree"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(3):
            save_image(src / "train" / name / f"{i}.png", COLOURS[c], size=(48, 32))  # non-square: crop + resize
        save_image(src / "val" / name / "v.jpg", COLOURS[c])
    assert imagefolder.list_classes(src) == ["cat", "dog", "eel"]
    summary = imagefolder.convert(src, tmp_path / "out", id_classes=["cat", "eel"], ood_classes=["dog"], compress=True)
    assert summary["layout"] == "imagefolder-trainval"
    for name in ("train", "val", "ood"):
        with zipfile.ZipFile(tmp_path / "out" / f"{name}.npz") as z:
            assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
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
    summary = imagefolder.convert(src, tmp_path / "out", id_classes=["a", "b"], ood_classes=["c"], size=16)
    assert summary["layout"] == "imagefolder"
    ds = data.load_dataset(tmp_path / "out")
    assert np.bincount(ds.train.labels).tolist() == [9, 2] and np.bincount(ds.val.labels).tolist() == [1, 1]
    assert len(ds.ood) == 10  # no held-out part exists, so OOD takes all of its classes
    assert_colours(ds.val, [COLOURS[0], COLOURS[1]])
    split = imagefolder.load_imagefolder(src, size=16)
    assert split.class_names == ["a", "b", "c"] and len(split) == 23


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "tree" / "a" / "broken.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        imagefolder.load_imagefolder(tmp_path / "tree")


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    for cls in ("a", "b"):
        for i in range(2):
            path = tmp_path / "tree" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ramp).save(path)  # PIL mode "I;16"
    assert Image.open(path).mode == "I;16"
    split = imagefolder.load_imagefolder(tmp_path / "tree")
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    for image in split.images:
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], expected)
    assert (split.images == 255).mean() < 0.01  # was 99.6 %: clipped to white


@pytest.mark.parametrize("size", [-5, 0, 2.5, True])
def test_bad_size_is_refused_before_anything_is_read(tiny_tree, tmp_path, size):
    with pytest.raises(DataError, match="--size") as err:
        imagefolder.convert(tiny_tree, tmp_path / "out", "n01", "n02", size=size)
    assert repr(size) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_impossible_size_is_a_one_line_error(tiny_tree, tmp_path):
    with pytest.raises(DataError, match="GB of memory"):
        imagefolder.load_tinyimagenet(tiny_tree, "train", ["n01"], size=10**7)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("held_out", ["val", "valid", "validation", "test"])
def test_train_with_any_held_out_folder(tmp_path, held_out):
    src = make_tree(
        tmp_path / "tree", {"train": {"cat": 4, "dog": 4, "eel": 4}, held_out: {"cat": 2, "dog": 2, "eel": 3}}
    )
    assert imagefolder.list_classes(src) == ["cat", "dog", "eel"]  # not ["test", "train"]
    summary = imagefolder.convert(src, tmp_path / "out", id_classes="cat,dog", ood_classes="eel")
    assert summary["layout"] == "imagefolder-trainval" and summary["held_out"] == held_out
    assert f"held-out split from {held_out}/" in summary["description"]
    ds = data.load_dataset(tmp_path / "out")
    assert (len(ds.train), len(ds.val), len(ds.ood)) == (8, 4, 3)  # val and OOD from the held-out folder
    assert_colours(ds.val, [COLOURS[0], COLOURS[1]])
    assert_colours(ds.ood, [COLOURS[2]])


def test_held_out_folders_are_tried_in_order_and_unlabelled_ones_skipped(tmp_path):
    src = make_tree(
        tmp_path / "a", {"train": {"cat": 3, "dog": 3}, "valid": {"cat": 1, "dog": 1}, "test": {"cat": 2, "dog": 2}}
    )
    assert imagefolder.convert(src, tmp_path / "o1", "cat", "dog")["held_out"] == "valid"
    src = make_tree(tmp_path / "b", {"train": {"cat": 10, "dog": 10}})
    save_image(src / "test" / "unlabelled.png", COLOURS[0])  # Kaggle style: test/ without classes
    save_image(src / "val" / "images" / "x.png", COLOURS[0])  # a folder, but not one of train's classes
    summary = imagefolder.convert(src, tmp_path / "o2", "cat", "dog")
    assert summary["layout"] == "imagefolder" and summary["held_out"] is None
    assert "train/" in summary["description"] and "90/10" in summary["description"]
    ds = data.load_dataset(tmp_path / "o2")
    assert (len(ds.train), len(ds.val), len(ds.ood)) == (9, 1, 10)


def test_wrapping_folders_are_looked_into(tmp_path):
    make_tree(tmp_path / "dl" / "outer" / "cifar10", {"train": {"cat": 3, "dog": 3}, "test": {"cat": 1, "dog": 1}})
    (tmp_path / "dl" / "README.txt").write_text("downloaded from somewhere")
    summary = imagefolder.convert(tmp_path / "dl", tmp_path / "out", "cat", "dog")
    assert summary["held_out"] == "test" and "outer/cifar10" in summary["description"]
    single_class = make_tree(tmp_path / "one", {"": {"cat": 3}})  # one class folder of images: not a wrapper
    assert imagefolder.list_classes(single_class) == ["cat"]


def test_zip_source_gives_the_same_arrays_as_the_folder(tmp_path):
    src = make_tree(
        tmp_path / "cifar10", {"train": {"cat": 3, "dog": 3, "eel": 3}, "test": {"cat": 1, "dog": 1, "eel": 2}}
    )
    archive = zip_tree(
        src,
        tmp_path / "cifar10.zip",
        extra=[("__MACOSX/cifar10/._x.png", b"junk"), ("cifar10/train/cat/.DS_Store", b"junk")],
    )
    imagefolder.convert(src, tmp_path / "from_dir", "cat,eel", "dog")
    summary = imagefolder.convert(archive, tmp_path / "from_zip", "cat,eel", "dog")
    assert summary["description"].startswith(f"{archive}/cifar10:")
    a, b = data.load_dataset(tmp_path / "from_dir"), data.load_dataset(tmp_path / "from_zip")
    for name in ("train", "val", "ood"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
        np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)
        assert getattr(a, name).class_names == getattr(b, name).class_names


def test_tinyimagenet_zip_and_val_sorted_into_class_folders(tiny_tree, tmp_path):
    archive = zip_tree(tiny_tree, tmp_path / "tiny-imagenet-200.zip")
    summary = imagefolder.convert(archive, tmp_path / "z", ["n03", "n01"], ["n04"])
    assert summary["layout"] == "tinyimagenet" and (summary["train"], summary["val"], summary["ood"]) == (6, 4, 2)
    assert data.load_dataset(tmp_path / "z").train.class_names == ["ice cream", "goldfish"]
    # Some scripts move val/images/* into val/<wnid>/images/ and delete the annotations: read those folders.
    for line in (tiny_tree / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        (tiny_tree / "val" / wnid / "images").mkdir(parents=True, exist_ok=True)
        (tiny_tree / "val" / "images" / name).rename(tiny_tree / "val" / wnid / "images" / name)
    (tiny_tree / "val" / "val_annotations.txt").unlink()
    imagefolder.convert(tiny_tree, tmp_path / "sorted", ["n03", "n01"], ["n04"])
    a, b = data.load_dataset(tmp_path / "z"), data.load_dataset(tmp_path / "sorted")
    for name in ("train", "val", "ood"):
        np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)


def test_not_a_tree(tmp_path):
    (tmp_path / "notes.zip").write_bytes(b"PK but not really a zip")
    for src, fragment in ((tmp_path / "nope", "not found"), (tmp_path / "notes.zip", "not a readable .zip")):
        with pytest.raises(DataError, match=fragment) as err:
            imagefolder.convert(src, tmp_path / "out", "1", "0")
        assert str(src) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_progress_bar_on_stderr(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "tree", {"train": {"cat": 3, "dog": 3}, "valid": {"cat": 1, "dog": 1}})
    monkeypatch.setattr(imagefolder, "_PROGRESS_DELAY_S", 0)  # the bar shows for reads over a second
    imagefolder.convert(src, tmp_path / "quiet", "cat", "dog")
    assert capsys.readouterr().err == ""
    imagefolder.convert(src, tmp_path / "out", "cat", "dog", progress=True)
    captured = capsys.readouterr()
    assert "train from train/" in captured.err and "val from valid/" in captured.err and "3/3" in captured.err
    assert captured.out == ""


# ----------------------------------------------------------------------------- pick_classes


AVAILABLE = [f"n{i:02d}" for i in range(20)]


def test_pick_classes_forms(tmp_path):
    assert imagefolder.pick_classes(AVAILABLE, "n03, n01") == ["n03", "n01"]
    (tmp_path / "ids.txt").write_text("# my classes\nn05\n\nn07  # bison\n")
    assert imagefolder.pick_classes(AVAILABLE, f"@{tmp_path / 'ids.txt'}") == ["n05", "n07"]
    ids = imagefolder.pick_classes(AVAILABLE, "5")
    assert len(ids) == 5 and ids == sorted(ids) and ids == imagefolder.pick_classes(AVAILABLE, "5")
    ood = imagefolder.pick_classes(AVAILABLE, "15", exclude=ids)
    assert not set(ood) & set(ids) and len(ood) == 15
    assert imagefolder.pick_classes(AVAILABLE, "5", seed=1) != ids


@pytest.mark.parametrize(
    "spec,exclude,fragment",
    [
        ("n01,n99", (), "n99"),
        ("n01,n01", (), "twice"),
        ("n01,n02", ("n02",), "both ID and OOD"),
        ("21", (), "only 20"),
        ("19", ("n00", "n01"), "only 18"),
        ("@/no/such/file.txt", (), "file.txt"),
    ],
)
def test_pick_classes_errors(spec, exclude, fragment):
    with pytest.raises(DataError, match=fragment):
        imagefolder.pick_classes(AVAILABLE, spec, exclude=exclude)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_pick_classes_refuses_a_bad_seed(seed):
    with pytest.raises(DataError, match="--seed"):
        imagefolder.pick_classes(AVAILABLE, "3", seed=seed)

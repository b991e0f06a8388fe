"""`selfsup data ...` on the command line: conversions, and every bad input as one line on stderr,
exit 2, nothing written."""

import numpy as np
import pytest

from image_trees import make_tiny_tree, save_image
from selfsup import cli, data


@pytest.fixture
def tiny_tree(tmp_path):
    return make_tiny_tree(tmp_path / "tiny-imagenet-200")


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert(tiny_tree, tmp_path, capsys):
    rc, out, err = run(
        capsys,
        "data",
        "convert",
        tiny_tree,
        tmp_path / "out",
        "--id-classes",
        "2",
        "--ood-classes",
        "1",
        "--size",
        "32",
        "--compress",
    )
    assert rc == 0 and err == ""
    assert out.startswith(f"read {tiny_tree}: Tiny-ImageNet-200, 4 classes")
    ds = data.load_dataset(tmp_path / "out")
    # the picks of earlier versions (RandomState(seed) for ID, seed + 1 for OOD), so class lists stay reproducible
    assert ds.train.class_names == ["ice cream", "kimono"] and ds.ood.class_names == ["goldfish"]
    assert ds.train.images.shape == (6, 32, 32, 3)


def test_demo_sizes(tmp_path, capsys):
    rc, out, err = run(
        capsys,
        "data",
        "demo",
        "--out",
        tmp_path / "d",
        "--size",
        "24",
        "--train-per-class",
        "3",
        "--val-per-class",
        "2",
        "--ood-per-class",
        "4",
    )
    assert rc == 0 and err == "" and out.startswith(f"wrote {tmp_path / 'd'}")
    ds = data.load_dataset(tmp_path / "d")
    assert ds.train.images.shape == (30, 24, 24, 3) and len(ds.val) == 20 and len(ds.ood) == 40
    rc, out, err = run(capsys, "data", "demo", "--out", tmp_path / "e", "--size", "8")
    assert rc == 2 and err.count("\n") == 1 and "size" in err and not (tmp_path / "e").exists()


def _bad_convert(tiny_tree, tmp_path, case):
    """Arguments for one bad `data convert` and a fragment the error must contain."""
    dest = tmp_path / "out"
    args = [tiny_tree, dest, "--id-classes", "n01,n02", "--ood-classes", "n03"]
    if case == "size":
        return args + ["--size", "-5"], "--size"
    if case == "size_zero":
        return args + ["--size", "0"], "--size"
    if case == "seed":
        return args + ["--seed", "-1"], "--seed"
    if case == "src_missing":
        return [tmp_path / "nope"] + args[1:], "nope"
    if case == "src_not_zip":
        (tmp_path / "tiny.zip").write_bytes(b"truncated")
        return [tmp_path / "tiny.zip"] + args[1:], "tiny.zip"
    if case == "src_empty":
        (tmp_path / "empty").mkdir()
        return [tmp_path / "empty"] + args[1:], "layout not recognised"
    if case == "unknown_class":
        return args[:5] + ["n99"], "n99"
    if case == "no_id":
        return args[:3] + ["0"] + args[4:], "no ID classes"
    if case == "overlap":
        return args[:5] + ["n02"], "n02"
    if case == "too_many":
        return args[:3] + ["5"] + args[4:], "only 4"
    if case == "class_file":
        return args[:3] + [f"@{tmp_path / 'ids.txt'}"] + args[4:], "ids.txt"
    if case == "bad_image":
        (tiny_tree / "train" / "n02" / "images" / "n02_1.JPEG").write_bytes(b"\xff\xd8 not really")
        return args, "n02_1.JPEG"
    if case == "bad_annotations":
        (tiny_tree / "val" / "val_annotations.txt").write_text("val_0.JPEG n01 no tabs\n")
        return args, "val_annotations.txt:1"
    if case == "dest_is_file":
        dest.write_text("a file")
        return args, "is a file"
    raise AssertionError(case)


BAD_CONVERTS = [
    "size",
    "size_zero",
    "seed",
    "src_missing",
    "src_not_zip",
    "src_empty",
    "unknown_class",
    "no_id",
    "overlap",
    "too_many",
    "class_file",
    "bad_image",
    "bad_annotations",
    "dest_is_file",
]


@pytest.mark.parametrize("case", BAD_CONVERTS)
def test_convert_bad_input_is_one_line_exit_2_nothing_written(tiny_tree, tmp_path, capsys, case):
    args, fragment = _bad_convert(tiny_tree, tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = run(capsys, "data", "convert", *args)
    assert rc == 2 and out == ""
    assert err.startswith("selfsup: error: ") and err.count("\n") == 1 and fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DEST folder, no stray file


def test_convert_never_replaces_without_overwrite(tiny_tree, tmp_path, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "val.npz").write_bytes(b"keep me")
    rc, _, err = run(capsys, "data", "convert", tiny_tree, dest, "--id-classes", "1", "--ood-classes", "1")
    assert rc == 2 and "val.npz: already exists" in err and err.count("\n") == 1
    assert [p.name for p in dest.iterdir()] == ["val.npz"] and (dest / "val.npz").read_bytes() == b"keep me"
    rc, _, _ = run(capsys, "data", "convert", tiny_tree, dest, "--id-classes", "1", "--ood-classes", "1", "--overwrite")
    assert rc == 0 and len(data.load_dataset(dest).val) == 2


def test_info_refuses_duplicate_class_names(tmp_path, capsys):
    images, labels = np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1])
    for name in ("train", "val"):
        np.savez(tmp_path / f"{name}.npz", images=images, labels=labels, class_names=np.array(["cat", "cat"]))
    rc, out, err = run(capsys, "data", "info", tmp_path)
    assert rc == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'train.npz'}: 'class_names' has 'cat' twice" in err


def test_convert_reads_a_16_bit_png_tree(tmp_path, capsys):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    from PIL import Image

    for cls in ("a", "b", "c"):
        for i in range(2):
            (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ramp).save(tmp_path / "tree" / cls / f"{i}.png")
    save_image(tmp_path / "tree" / "c" / "rgb.png", (10, 20, 30))
    rc, _, _ = run(
        capsys, "data", "convert", tmp_path / "tree", tmp_path / "out", "--id-classes", "a,b", "--ood-classes", "c"
    )
    assert rc == 0
    ds = data.load_dataset(tmp_path / "out")
    assert (ds.train.images == 255).mean() < 0.01 and ds.train.images.mean() == pytest.approx(127.4, abs=0.5)


@pytest.mark.parametrize(
    "command,fragments",
    [
        (
            "convert",
            [
                "SRC is a folder or a .zip",
                "Tiny-ImageNet-200",
                "wnids.txt",
                "val/val_annotations.txt",
                "train/<class>/<image>",
                "val/, valid/, validation/, test/",
                "wrapping folder",
                "<class>/<image>",
                "90/10",
                "DEST gets train.npz",
                "ood.npz",
                "16-bit",
                "--compress",
            ],
        ),
        (
            "download",
            [
                "tiny-imagenet",
                "md5:90528d7ca1a48142e341f4ef8d21d0de",
                "no SHA-256",
                "$SELFSUP_CACHE",
                "$SELFSUP_TINYIMAGENET_URL",
                "--url",
                "--hash",
                "DEST gets train.npz",
                "ood.npz",
                "--id-classes",
                "--ood-classes",
                "--seed",
                "--size",
                "--compress",
            ],
        ),
    ],
)
def test_help_says_what_src_may_be_and_what_dest_gets(capsys, command, fragments):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data", command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    missing = [f for f in fragments if f not in out]
    assert not missing, out


def test_data_classes_lists_what_a_tree_offers(tmp_path, capsys):
    from image_trees import make_tree

    src = make_tree(tmp_path / "tree", {"train": {"cat": 3, "dog": 3}, "test": {"cat": 2, "dog": 2}})
    assert cli.main(["data", "classes", str(src)]) == 0
    assert capsys.readouterr().out.split() == ["cat", "dog"]

"""`selfsup ...`: the command line over the library.

    selfsup data demo [--out data/demo] [--size 32 ...]  generate the synthetic demo dataset
    selfsup data convert SRC DEST --id-classes .. --ood-classes ..
    selfsup data download tiny-imagenet [DEST] --id-classes .. --ood-classes ..   download + convert
    selfsup data info DIR
    selfsup train --config FILE --data DIR --run-dir DIR [--set key=value ...] [--resume] [--eval]
    selfsup plan --config FILE --data DIR [--set key=value ...]   time, memory and the batch that fits
    torchrun --nproc-per-node N -m selfsup.cli train ...   the same, data-parallel over N processes
    selfsup train ... --executor slurm --nodes N --gpus-per-node G [--cluster KEY=VALUE ...] [--detach]
    selfsup eval --run-dir DIR --data DIR
    selfsup sweep configs/sweeps/NAME.yaml [--data DIR] [--runs runs] [--jobs N]
    selfsup sweep FILE --executor slurm [--cluster KEY=VALUE ...] [--detach]   (--status: where each run is)
    selfsup report [--notebook notebooks/05_report.ipynb] [--out reports]

Every input problem ends in one line on stderr naming the file or key, and exit status 2
(`selfsup plan` exits 1 when the configured batch does not fit).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from . import (
    cluster,
    config,
    data,
    demo_data,
    download,
    evaluate,
    imagefolder,
    pipeline,
    plan,
    results,
    runs,
    sweep,
    workbook,
)
from .config import ConfigError
from .data import DataError
from .runs import RunError

# What a command needs beyond what training and evaluation import (torch, torchvision, numpy,
# scikit-learn, pyyaml, safetensors, tqdm): a machine without it (a bare GPU box) runs the other
# commands, and this one says what is missing before it starts, in one line.
NEEDS = {
    "data download": ("pooch", "requests"),
    "sweep": ("papermill", "nbformat", "ipykernel"),
    "report": ("papermill", "nbformat", "ipykernel", "nbconvert"),
    "sweep --executor slurm": ("papermill", "nbformat", "ipykernel", "submitit"),
    "train --executor slurm": ("submitit",),
}


def missing_packages(command: str) -> list[str]:
    """The packages `selfsup COMMAND` needs that cannot be imported here."""
    return [name for name in NEEDS.get(command, ()) if importlib.util.find_spec(name) is None]


def _data(args):
    if args.data_cmd == "demo":
        ds = demo_data.make_demo(
            args.out,
            seed=args.seed,
            size=args.size,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            ood_per_class=args.ood_per_class,
        )
        print(f"wrote {args.out}: {data.describe(ds)}")
    elif args.data_cmd == "convert":
        summary = imagefolder.convert(
            args.src,
            args.dest,
            args.id_classes,
            args.ood_classes,
            seed=args.seed,
            size=args.size,
            overwrite=args.overwrite,
            compress=args.compress,
            progress=not args.no_progress,
        )
        print(f"read {summary['description']}")
        print(f"wrote {args.dest}: {data.describe(data.load_dataset(args.dest))}")
    elif args.data_cmd == "download":
        summary = download.tiny_imagenet(
            args.dest,
            args.id_classes,
            args.ood_classes,
            url=args.url,
            known_hash=args.hash,
            cache=args.cache,
            seed=args.seed,
            size=args.size,
            overwrite=args.overwrite,
            compress=args.compress,
            progress=not args.no_progress,
        )
        print(f"read {summary['description']}")
        print(f"wrote {args.dest}: {data.describe(data.load_dataset(args.dest))}")
    elif args.data_cmd == "info":
        print(data.describe(data.load_dataset(args.dir)))
    elif args.data_cmd == "classes":  # what --id-classes / --ood-classes may name
        print("\n".join(imagefolder.list_classes(args.src)))


def _train(args):
    if args.executor == "slurm":  # this command in every task of one SLURM job (selfsup.cluster)
        cfg_file, data_dir, run_dir = (str(Path(p).resolve()) for p in (args.config, args.data, args.run_dir))
        argv = ["train", "--config", cfg_file, "--data", data_dir, "--run-dir", run_dir, "--no-progress"]
        argv += [f"--set={s}" for s in args.set or []] + (["--resume"] if args.resume else [])
        argv += ["--eval"] if args.eval else []
        opts = cluster.cluster_options(None, cluster.parse_cluster_args(args.cluster))
        code = cluster.submit_train(main, argv, args.run_dir, opts, args.nodes, args.gpus_per_node, args.detach)
        if not code and not args.detach:
            print(json.dumps(runs.Run(args.run_dir).info().get("final", {})))
        return code
    cfg = config.load(args.config, config.parse_overrides(args.set))
    ds = data.load_dataset(args.data)
    try:
        out = pipeline.run(
            cfg,
            ds,
            args.run_dir,
            data_dir=args.data,
            evaluate=args.eval,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except torch.cuda.OutOfMemoryError as e:
        command = plan.plan_command(args.config, args.data, args.set)
        raise RunError(f"{args.run_dir}: {plan.out_of_memory_message(e, cfg.batch_size, command)}") from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
        print(json.dumps(out["info"].get("final", {})))
        if out["eval"] is not None:
            print(json.dumps(out["eval"]["summary"], indent=2))


def _plan(args):
    cfg = config.load(args.config, config.parse_overrides(args.set))
    estimate = plan.estimate(cfg, data.load_dataset(args.data), steps=args.steps, warmup=args.warmup)
    print(estimate)
    return 0 if estimate.fits else 1


def _eval(args):
    result = evaluate.evaluate_run(args.run_dir, args.data)
    print(json.dumps(result["summary"], indent=2))
    for note in result["skipped"]:  # protocols the data is too small for
        print(f"selfsup: note: {note}", file=sys.stderr)


def _sweep(args):
    if args.status:  # every run: finished / failed / queued / running / stopped / not submitted
        points = sweep.load_sweep(args.file, data=args.data, runs_root=args.runs).points
        print("\n".join(cluster.status_lines([(p.slug, str(p.run_dir)) for p in points])))
        return 0
    s = sweep.load_sweep(args.file, data=args.data, runs_root=args.runs)
    cluster_args = cluster.parse_cluster_args(args.cluster)
    rows = sweep.run_sweep(
        s,
        jobs=args.jobs,
        progress=not args.no_progress,
        executor=args.executor,
        cluster_args=cluster_args,
        detach=args.detach,
    )
    table = s.root / results.RESULTS
    print(f"results: {table}")
    if args.detach:
        return 0
    bad = [r for r in rows if r["status"] != "finished"]
    if bad:  # the others ran; the exit status still says the sweep is incomplete
        see = (
            f"their {runs.ERROR}"
            if all(r["status"] in ("failed", "invalid") for r in bad)
            else f"the errors in {table}"
        )
        print(
            f"selfsup: error: {len(bad)} of {len(rows)} sweep points did not finish "
            f"({', '.join(r['point'] + ': ' + r['status'] for r in bad)}); see {see}",
            file=sys.stderr,
        )
        return 1
    return 0


def _report(args):
    for path in workbook.export(
        args.notebook, args.out, parameters=dict(args.param or []), progress=not args.no_progress
    ):
        print(f"wrote {path}")


def _conversion_options(p: argparse.ArgumentParser) -> None:
    """The options `data convert` and `data download` share."""
    p.add_argument(
        "--id-classes",
        required=True,
        help="comma-separated class ids, @file (one per line), or a count N picked at random",
    )
    p.add_argument(
        "--ood-classes",
        required=True,
        help="as --id-classes, disjoint from them (a count is drawn from the rest); 0 for no ood.npz",
    )
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64): centre crop + resize")
    p.add_argument("--seed", type=int, default=0, help="for class counts: ID drawn with SEED, OOD with SEED + 1")
    p.add_argument("--overwrite", action="store_true", help="replace train/val/ood.npz already in DEST")
    p.add_argument(
        "--compress",
        action="store_true",
        help="write compressed .npz (np.savez_compressed): smaller to move around, loaded the same way",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _demo_options(p: argparse.ArgumentParser) -> None:
    """`data demo`: where, the seed, and the sizes (selfsup.demo_data.make_demo's defaults)."""
    dd = demo_data.DEMO_DEFAULTS
    p.add_argument("--out", default="data/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=dd["size"], help=f"image side in pixels (default {dd['size']})")
    p.add_argument("--train-per-class", type=int, default=dd["train_per_class"], help="(default %(default)s)")
    p.add_argument("--val-per-class", type=int, default=dd["val_per_class"], help="(default %(default)s)")
    p.add_argument("--ood-per-class", type=int, default=dd["ood_per_class"], help="(default %(default)s)")


def _data_parser(sub) -> None:
    """`selfsup data ...`: demo, convert, download, info, classes."""
    d = sub.add_parser("data", help="make, convert and inspect datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    _demo_options(dsub.add_parser("demo", help="generate the synthetic demo dataset (seconds)"))
    conv = dsub.add_parser(
        "convert",
        help="course-format NPZ from an ImageFolder or Tiny ImageNet tree (folder or .zip)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an image tree to the course format, all or nothing: DEST gets train.npz and\n"
        "val.npz (ID classes) and ood.npz (OOD classes; none with --ood-classes 0), images\n"
        "(N, SIZE, SIZE, 3) uint8, labels, class_names. The layout and folders used are printed.\n\n"
        "SRC is a folder or a .zip of one (read in place) holding one of these layouts; hidden\n"
        "files and __MACOSX/ are ignored, and a single wrapping folder (cifar10/) is looked into:\n"
        "  Tiny-ImageNet-200  wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/ +\n"
        "                     val/val_annotations.txt: ID train from train/, ID val and OOD\n"
        "                     from val/ (50 a class); names from words.txt (goldfish)\n"
        "  ImageFolder        train/<class>/<image> beside a held-out "
        f"{', '.join(h + '/' for h in imagefolder.HELD_OUT)}\n"
        "                     with <class>/<image> (the first of these that has train's classes):\n"
        "                     ID val and OOD from the held-out folder\n"
        "  ImageFolder        <class>/<image>, or train/ alone: each ID class split 90/10 by\n"
        "                     sorted file name; OOD takes all images of its classes\n"
        f"Images: {', '.join(imagefolder.IMAGE_SUFFIXES)} (any case, 8- or 16-bit) anywhere below their "
        "class\nfolder; centre-cropped to square and resized to SIZE.",
    )
    conv.add_argument("src", help="a folder or .zip: Tiny-ImageNet-200 or an ImageFolder tree (layouts above)")
    conv.add_argument("dest", help="the folder to write train.npz, val.npz, ood.npz into")
    _conversion_options(conv)

    dl = dsub.add_parser(
        "download",
        help="download Tiny-ImageNet-200 and convert it to course format in one step",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download Tiny-ImageNet-200 (a 248 MB zip, once) and convert it to course format:\n"
        "DEST gets train.npz and val.npz of the ID classes (500 and 50 images a class) and\n"
        "ood.npz of the OOD classes (their 50 val images each), as `data convert` writes them.\n\n"
        f"The zip is checked against {download.TINY_IMAGENET_HASH},\n"
        "the official file's published MD5 (no SHA-256 is published), and kept in a cache:\n"
        f"--cache, else ${download.CACHE_ENV}, else the user cache folder (~/.cache/selfsup on\n"
        "Linux). A truncated or corrupt download is refused and nothing is kept; what a\n"
        "killed download left is removed by the next one. A cached copy that does not\n"
        "match is fetched again.\n"
        f"A mirror: --url or ${download.URL_ENV} (with --hash if its file differs).\n"
        "A zip or folder you already have: selfsup data convert SRC DEST.",
    )
    dl.add_argument("name", choices=["tiny-imagenet"], help="the dataset")
    dl.add_argument("dest", nargs="?", default="data/tiny-imagenet", help="the course-format folder to write")
    _conversion_options(dl)
    dl.add_argument(
        "--url", help=f"a mirror of the zip (default ${download.URL_ENV}, else {download.TINY_IMAGENET_URL})"
    )
    dl.add_argument(
        "--hash", help="the expected hash of the mirror's file, md5:... or sha256:... (default: the official md5)"
    )
    dl.add_argument(
        "--cache", help=f"where the zip is kept (default ${download.CACHE_ENV}, else the user cache folder)"
    )
    info = dsub.add_parser("info", help="validate a dataset folder and summarise it")
    info.add_argument("dir")
    classes = dsub.add_parser("classes", help="list the class ids an image tree offers (for --id-classes)")
    classes.add_argument("src", help="a folder or .zip: Tiny-ImageNet-200 or an ImageFolder tree")
    d.set_defaults(fn=_data)


def _executor_options(p: argparse.ArgumentParser) -> None:
    """Where `train` and `sweep` run: here, or on a SLURM cluster through submitit (selfsup.cluster)."""
    p.add_argument("--executor", choices=["local", "slurm"], default="local", help="where to run (default local)")
    p.add_argument(
        "--cluster", action="append", metavar="KEY=VALUE", help="a SLURM option (repeatable), e.g. partition=gpu"
    )
    p.add_argument("--detach", action="store_true", help="--executor slurm: submit, print the job id, and exit")


PLAN_HELP = (
    "time a few real steps and a monitoring pass of a run, writing nothing: images/s, epoch and run time, "
    "peak memory, parameters, and the largest batch that fits when the configured one does not"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    _data_parser(sub)

    for name in ("train", "plan"):  # plan takes train's arguments, so a train command line can be planned
        t = sub.add_parser(name, help=PLAN_HELP if name == "plan" else "train one self-supervised run")
        t.add_argument("--config", required=True, help="a preset YAML, e.g. configs/demo.yaml")
        t.add_argument("--data", required=True, help="folder with train.npz, val.npz [, ood.npz]")
        t.add_argument("--run-dir", required=name == "train", help="(plan: accepted, nothing is written)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        t.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
        t.add_argument("--eval", action="store_true", help="then evaluate it, as `selfsup eval` does (eval.json)")
        t.add_argument("--no-progress", action="store_true")
        t.set_defaults(fn=_train)
    _executor_options(t := sub.choices["train"])
    t.add_argument("--nodes", type=int, default=1, help="--executor slurm: nodes for this run (default 1)")
    t.add_argument("--gpus-per-node", type=int, default=0, help="--executor slurm: GPUs (= processes) a node")
    t = sub.choices["plan"]
    t.add_argument("--steps", type=int, default=5, help="timed optimisation steps (default 5)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    t.set_defaults(fn=_plan)

    e = sub.add_parser("eval", help="k-NN and linear probes in- and out-of-distribution -> eval.json")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--data", required=True)
    e.set_defaults(fn=_eval)

    s = sub.add_parser("sweep", help="run notebook 03 once per grid point with papermill")
    s.add_argument("file", help="a sweep YAML, e.g. configs/sweeps/demo_temperature.yaml")
    s.add_argument("--data", default=None, help="override the sweep file's data folder")
    s.add_argument("--runs", default="runs", help="root folder for sweep run folders")
    s.add_argument("--jobs", type=int, default=None, help="points in parallel (default: one per GPU, else 1)")
    s.add_argument("--no-progress", action="store_true")
    _executor_options(s)
    s.add_argument("--status", action="store_true", help="list every run: state, SLURM job id, log file")
    s.set_defaults(fn=_sweep)

    r = sub.add_parser("report", help="execute the report notebook and export HTML, PDF and Markdown")
    r.add_argument("--notebook", default="notebooks/05_report.ipynb")
    r.add_argument("--out", default="reports")
    r.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="a papermill parameter for the report notebook (repeatable)",
    )
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = " ".join(filter(None, (args.cmd, getattr(args, "data_cmd", None))))
    if getattr(args, "executor", "local") == "slurm":
        command += " --executor slurm"
    missing = missing_packages(command)
    if missing:
        print(
            f"selfsup: error: `selfsup {command}` needs {', '.join(missing)}, not installed here "
            f"(pip install {' '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    try:
        return args.fn(args) or 0
    except (ConfigError, DataError, RunError, FileNotFoundError, workbook.NotebookFailed, cluster.ClusterError) as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that failed (read-only filesystem, full disk, file-size limit): its file, its cause
        print(f"selfsup: error: {e.filename}: {e.strerror}" if e.filename else f"selfsup: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

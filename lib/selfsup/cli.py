"""`selfsup ...`: the command line over the library.

    selfsup data demo [--out data/demo]                 generate the synthetic demo dataset
    selfsup data convert SRC DEST --id-classes .. --ood-classes ..
    selfsup data info DIR
    selfsup train --config FILE --data DIR --run-dir DIR [--set key=value ...] [--resume]
    torchrun --nproc-per-node N -m selfsup.cli train ...   the same, data-parallel over N processes
    selfsup eval --run-dir DIR --data DIR
    selfsup sweep configs/sweeps/NAME.yaml [--data DIR] [--runs runs] [--jobs N]
    selfsup report [--notebook notebooks/05_report.ipynb] [--out reports]

Every input problem ends in one line on stderr naming the file or key, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _data(args):
    from . import data, demo_data, imagefolder

    if args.data_cmd == "demo":
        ds = demo_data.make_demo(args.out, seed=args.seed)
        print(f"wrote {args.out}: {data.describe(ds)}")
    elif args.data_cmd == "convert":
        summary = imagefolder.convert(args.src, args.dest, args.id_classes, args.ood_classes, seed=args.seed,
                                      size=args.size, overwrite=args.overwrite, compress=args.compress,
                                      progress=not args.no_progress)
        print(f"read {summary['description']}")
        print(f"wrote {args.dest}: {data.describe(data.load_dataset(args.dest))}")
    elif args.data_cmd == "info":
        print(data.describe(data.load_dataset(args.dir)))


def _train(args):
    from . import config, data, train

    cfg = config.load(args.config, config.parse_overrides(args.set))
    ds = data.load_dataset(args.data)
    info = train.train(cfg, ds, args.run_dir, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
        print(json.dumps(info.get("final", {})))


def _eval(args):
    from . import evaluate

    result = evaluate.evaluate_run(args.run_dir, args.data)
    print(json.dumps(result["summary"], indent=2))


def _sweep(args):
    from . import sweep

    table = sweep.run_sweep(args.file, data=args.data, runs_root=args.runs, jobs=args.jobs,
                            progress=not args.no_progress)
    print(f"results: {table}")


def _report(args):
    from . import report

    for path in report.export(args.notebook, args.out, parameters=dict(args.param or [])):
        print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="make, convert and inspect datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    demo = dsub.add_parser("demo", help="generate the synthetic demo dataset (seconds)")
    demo.add_argument("--out", default="data/demo")
    demo.add_argument("--seed", type=int, default=0)
    conv = dsub.add_parser("convert", help="course-format NPZ from an ImageFolder or Tiny ImageNet tree")
    conv.add_argument("src")
    conv.add_argument("dest")
    conv.add_argument("--id-classes", required=True,
                      help="comma-separated class ids, @file (one per line), or a count N picked at random")
    conv.add_argument("--ood-classes", required=True, help="as --id-classes; must be disjoint from them")
    conv.add_argument("--size", type=int, default=64)
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--overwrite", action="store_true")
    conv.add_argument("--compress", action="store_true",
                      help="write compressed .npz (np.savez_compressed): smaller to move around, loaded the same way")
    conv.add_argument("--no-progress", action="store_true")
    info = dsub.add_parser("info", help="validate a dataset folder and summarise it")
    info.add_argument("dir")
    d.set_defaults(fn=_data)

    t = sub.add_parser("train", help="train one self-supervised run")
    t.add_argument("--config", required=True, help="a preset YAML, e.g. configs/demo.yaml")
    t.add_argument("--data", required=True, help="folder with train.npz, val.npz [, ood.npz]")
    t.add_argument("--run-dir", required=True)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_train)

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
    s.set_defaults(fn=_sweep)

    r = sub.add_parser("report", help="execute the report notebook and export HTML, PDF and Markdown")
    r.add_argument("--notebook", default="notebooks/05_report.ipynb")
    r.add_argument("--out", default="reports")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a papermill parameter for the report notebook (repeatable)")
    r.set_defaults(fn=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .config import ConfigError
    from .data import DataError
    from .train import RunError

    try:
        args.fn(args)
    except (ConfigError, DataError, RunError, FileNotFoundError) as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

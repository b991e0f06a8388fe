"""The course's findings at CPU scale: a finished sweep's results as Markdown tables per axis (mean
± 95% interval over seeds, beside the random-init floor) and what they show, computed from the
intervals by selfsup.report.findings -- the text that goes into benchmarks/RESULTS.md.

    python benchmarks/study_table.py benchmarks/out/tin10/tin10_study
"""

from __future__ import annotations

import argparse

from selfsup import report, results
from selfsup.methods import titled


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="a sweep folder (with results.csv), e.g. runs/tin10_study")
    args = p.parse_args(argv)
    table = results.load_results(args.sweep)
    for axis in dict.fromkeys(a for axes in table["axes"] for a in axes):  # the swept axes, in order
        rows = titled(results.summarise(results.axis_results(table, axis), keys=[axis]), axis)  # SimCLR, not simclr
        print(f"\n#### {axis}\n")
        print(report.summary_table(rows, axis, axis, linear=False))
        print(
            "\n"
            + report.findings(rows, axis, "val_knn", "k-NN on val")
            + " "
            + report.findings(rows, axis, "ood_knn", "k-NN on OOD")
        )
    print("\n" + report.INTERVAL_NOTE)


if __name__ == "__main__":
    main()

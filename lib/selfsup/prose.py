"""The report's sentences that carry numbers from results: what the data are, how a run was
trained (with only the settings its method reads), what it reached, what the method comparison
shows, and the discussion's points that follow from the numbers. Notebooks 01, 04 and 05 show them
between their Markdown cells, which hold the prose that does not depend on results.

Every value read from files (names, paths, config values, error texts, run.json's environment)
goes in through display.text or display.code, so it shows as text and never as markup.
"""

from __future__ import annotations

from .demo_data import is_synthetic
from .display import code, duration, fmt, listing, markdown_table, pct, plural, settings_read, text
from .methods import REGISTRY, title, titled
from .report import HEADLINE_COLUMNS, chosen, findings, headline_rows, summary_table


def comparison(c: dict | None, details: bool = False) -> str:
    """The methods compared (what each does), the settings in which they differ, the table over
    seeds and its findings; with `details` also each method's loss and time, and the failures."""
    if c is None:
        return "**Not run.** No method comparison found (run `notebooks/01_compare_methods.ipynb`)."
    done = [r for r in c["rows"] if r["n_seeds"]]
    rows = titled(c["rows"])
    epochs = sorted({r["epochs"] for r in done})
    methods = [REGISTRY.get(r["method"]) for r in done]
    described = [f"{m.title} ({m.summary})" if m else text(r["method"]) for m, r in zip(methods, done)]
    differ = c["settings"]
    keys = list(dict.fromkeys(k for d in differ.values() for k in d))
    out = (
        "; ".join(described)
        + (f": {plural(epochs[0], 'epoch')} each" if len(epochs) == 1 else "")
        + f" (sweep {code(c['sweep'])})"
        + (
            ", with these settings per method (n/a: a setting the method does not read):\n\n"
            + markdown_table(
                [{"setting": k, **{m: d.get(k) for m, d in differ.items()}} for k in keys],
                [("setting", "setting")] + [(m, title(m)) for m in differ],
            )
            if keys
            else ", with the same settings."
        )
    )
    extra = [("train_loss", "loss", fmt), ("wall_clock_s", "time", duration)] if details else ()
    out += "\n\n" + summary_table(rows, "method", "method", extra=extra)
    if done:
        out += "\n\n" + " ".join(
            (findings(rows, "method", "val_knn", "k-NN on val"), findings(rows, "method", "ood_knn", "k-NN on OOD"))
        )
        out += " " + chosen(rows, "method")
    failed = [r for r in rows if r["status"] != "finished"] if details else []
    return out + "".join(
        f"\n\n**{text(r['method'])}** {text(r['status'])}: {text(r.get('error') or 'see its run folders')}"
        for r in failed
    )


def _count(n, word: str) -> str:
    return f"{text(fmt(n))} {word}{'' if n == 1 else 's'}"


def run(cfg: dict, info: dict | None = None, run_dir=None) -> str:
    """How a run was trained, in one sentence, with the settings its method reads (a BYOL run has no
    temperature); with its run.json (`info`), the training time, device and config hash."""
    method = REGISTRY.get(cfg.get("method"))
    own = [k for k in (method.settings if method else ()) if k not in method.heads]
    read = settings_read(cfg)
    out = (
        f"{text(title(cfg['method']))} with a {text(cfg['backbone'])} backbone, trained for "
        f"{_count(cfg['epochs'], 'epoch')} at batch {text(fmt(cfg['batch_size']))} with {text(cfg['optimizer'])} "
        f"(peak lr {text(fmt(cfg['lr']))}, weight decay {text(fmt(cfg['weight_decay']))}, "
        f"{_count(cfg['warmup_epochs'], 'warm-up epoch')}, cosine decay)"
        + (" and " + listing(f"{text(k)} {text(fmt(read[k]))}" for k in own if k in read) if own else "")
    )
    if info:
        env = info.get("environment") or {}
        out += (
            f", in {duration(info.get('wall_clock_s'))} of training on {text(env.get('device', 'n/a'))} "
            f"(config hash {code(info.get('config_hash', 'n/a'))}"
            + (f", run folder {code(run_dir)})" if run_dir else ")")
        )
    elif run_dir:
        out = f"**Run** {code(run_dir)}: " + out
    return out + "."


def data(dataset, data_dir) -> str:
    """The dataset in one paragraph: its sizes and classes, and whether it is the synthetic demo."""
    n_ood = dataset.ood.num_classes if dataset.ood is not None else 0
    h, w = dataset.train.images.shape[1:3]
    return (
        f"**Data.** {len(dataset.train)} training and {len(dataset.val)} validation images of "
        f"{dataset.train.num_classes} classes"
        + (f", and {len(dataset.ood)} OOD images of {n_ood} other classes" if n_ood else "")
        + f", {h}x{w} pixels. "
        + (
            "**These are the workbook's synthetic demo data** (generated shapes and patterns, `selfsup data demo`), "
            "so the numbers show the pipeline working, not results comparable to the course's."
            if is_synthetic(dataset)
            else f"Source: {code(data_dir)}."
        )
    )


def results(ev: dict, dataset) -> str:
    """The final run's accuracies against chance and its random-init floor, then the headline table."""
    s, n_id = ev["summary"], dataset.train.num_classes
    gain = s["val_knn"] - s["random_init_val_knn"]
    out = (
        f"The final encoder reaches **{pct(s['val_knn'])}** course k-NN accuracy on the validation images "
        f"({n_id} classes, chance {pct(1 / n_id)}), {abs(100 * gain):.1f} percentage points "
        f"{'above' if gain >= 0 else 'below'} the same network untrained ({pct(s['random_init_val_knn'])})."
    )
    if "ood_knn" in s:
        n_ood = dataset.ood.num_classes
        out += (
            f" On the {n_ood} unseen classes it reaches **{pct(s['ood_knn'])}** (random init "
            f"{pct(s['random_init_ood_knn'])}, chance {pct(1 / n_ood)})."
        )
    if "val_linear" in s:
        out += f" A linear probe gives {pct(s['val_linear'])} on val" + (
            f" and {pct(s['ood_linear'])} OOD." if "ood_linear" in s else "."
        )
    return out + "\n\n" + markdown_table(headline_rows(ev), HEADLINE_COLUMNS)


def reference(ref: dict | None, dataset) -> str:
    """The course's reference numbers (ref: val_knn, ood_knn, source), and whether they compare."""
    if not ref:
        return ""
    return f"For reference, {text(ref['source'])} reached {pct(ref['val_knn'])} val and {pct(ref['ood_knn'])} OOD" + (
        " -- on real images with many more classes, so not comparable to the synthetic demo above."
        if is_synthetic(dataset)
        else "."
    )


def discussion(ev: dict, dataset, compared: dict | None, ablations: dict) -> str:
    """The discussion's points that follow from the numbers, as a Markdown list."""
    s, n_id = ev["summary"], dataset.train.num_classes
    points = []
    if "ood_knn" in s:
        n_ood = dataset.ood.num_classes
        points.append(
            f"Out of distribution: k-NN accuracy is {pct(s['val_knn'])} on the seen classes "
            f"({100 * (s['val_knn'] - 1 / n_id):+.1f} points over {n_id}-way chance) and {pct(s['ood_knn'])} on the "
            f"unseen ones ({100 * (s['ood_knn'] - 1 / n_ood):+.1f} points over {n_ood}-way chance); the OOD task has "
            "its own classes, reference set and chance level, so only the lifts over chance and over the "
            "random-init floor compare."
        )
    if "val_linear" in s:
        points.append(
            f"The linear probe is {'above' if s['val_linear'] > s['val_knn'] else 'below'} k-NN on val "
            f"({pct(s['val_linear'])} vs {pct(s['val_knn'])}); k-NN needs no training but depends on the feature scale."
        )
    seeds = sorted({r["n_seeds"] for r in compared["rows"] if r["n_seeds"]}) if compared else []
    if len(seeds) == 1:
        points.append(f"The method comparison has {plural(seeds[0], 'seed')} a method.")
    points.append("Ablations with results: " + (listing(text(a) for a in ablations) or "none") + ".")
    if is_synthetic(dataset):
        points.append(
            "The data are synthetic (generated shapes and patterns): the pipeline is exercised end to end, "
            "but the accuracies say nothing about natural images."
        )
    return "\n".join(f"- {p}" for p in points)

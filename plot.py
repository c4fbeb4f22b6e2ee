"""Turn run directories into pictures: training curves, and what the curriculum is doing.

    python plot.py runs/demo                       # one run  -> runs/demo/training.png, runs/demo/curriculum.png
    python plot.py runs/every1 runs/every5 --out ablation   # overlay -> ablation_training.png, ablation_curriculum.png

Each run is labelled by the flags in its config.json that differ between the runs given (so two runs that
differ only in --proposer-update-every are labelled by it). Runs that differ only in --seed share a label and
are drawn as their mean (thick) over each seed (thin). Needs matplotlib, an optional requirement for this
script alone: pip install matplotlib.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import sqlm

try:  # optional: only this script needs it
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
except ImportError:
    matplotlib = None

# Flags that never label a run: those that do not change what it learns (paths, speed and memory knobs, logging;
# the ones --resume may change, but for the length of the run), and the seed and validation set, which vary
# within one setting.
IGNORED = (sqlm.RESUMABLE - {"steps"}) | {"seed", "eval_limit", "validation_data"}

# (metrics.jsonl key, panel title) for the two figures; a key a run lacks is simply not drawn.
TRAINING_PANELS = [
    ("proposer_reward", "proposer reward"),
    ("solver_reward", "solver reward"),
    ("valid_fraction", "valid-question rate"),
    ("validation_accuracy", "held-out (validation) accuracy, greedy"),
]
CURRICULUM_PANELS = [
    (("too_easy", "in_band", "too_hard"), "majority-count band: too easy / in band / too hard"),
    (("pseudo_label_accuracy", "solver_accuracy"), "audit: majority answer right / solver answer right"),
    (("novelty", "distinct_questions"), "question n-gram novelty / distinct fraction"),
    (("question_digits", "question_operators", "question_length"), "question digits / operators / length"),
]


def read_run(directory: Path) -> tuple[dict, list[dict]]:
    try:
        config = json.loads((directory / "config.json").read_text())
        lines = (directory / "metrics.jsonl").read_text().splitlines()
    except OSError as error:
        raise SystemExit(f"error: {str(directory)!r} is not a run directory ({error.strerror}); pass the --out of "
                         "a sqlm.py run.") from None
    return config, [json.loads(line) for line in lines if line.strip()]


def run_labels(configs: list[dict]) -> list[str]:
    """Name each run by the flags whose values differ across the runs ('' when only seeds differ)."""
    keys = sorted({k for c in configs for k in c} - IGNORED)
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]
    return [" ".join(f"{k.replace('_', '-')}={c.get(k)}" for k in differing) or "run" for c in configs]


def series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of one metric. Validation accuracy is measured after step s's update, so it sits at x = s + 1,
    with the accuracy before training at x = 0."""
    if key == "validation_accuracy":
        points = [(0, m["validation_accuracy_initial"]) for m in metrics
                  if m.get("validation_accuracy_initial") is not None]
        points += [(m["step"] + 1, m[key]) for m in metrics if m.get(key) is not None]
    else:
        points = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
    return [x for x, _ in points], [y for _, y in points]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average, so noisy per-step rewards show their trend (window 1 = raw)."""
    windows = [values[max(0, i - window + 1):i + 1] for i in range(len(values))]
    return [sum(part) / len(part) for part in windows]


def mean_over_seeds(curves: list[tuple[list, list]]) -> tuple[list, list]:
    """Average the seeds' curves at the x values all of them have."""
    common = sorted(set.intersection(*(set(x) for x, _ in curves)))
    lookup = [dict(zip(x, y)) for x, y in curves]
    return common, [sum(d[x] for d in lookup) / len(lookup) for x in common]


def draw(figure_path: Path, panels, groups: dict, window: int, title: str) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":"]
    for axis, (keys, panel_title) in zip(axes.flat, panels):
        keys = (keys,) if isinstance(keys, str) else keys
        for g, (label, runs) in enumerate(groups.items()):
            for k, key in enumerate(keys):
                curves = [series(metrics, key) for metrics in runs]
                curves = [(x, y if key == "validation_accuracy" else smooth(y, window)) for x, y in curves if x]
                if not curves:
                    continue
                name = label + (f" {key}" if len(keys) > 1 else "")
                color, style = colors[g % len(colors)], styles[k % len(styles)]
                if len(curves) > 1:  # several seeds: thin line each, thick mean
                    for x, y in curves:
                        axis.plot(x, y, style, color=color, alpha=0.25, linewidth=0.8)
                x, y = mean_over_seeds(curves)
                axis.plot(x, y, style, color=color, linewidth=2,
                          marker="o" if key == "validation_accuracy" else None, markersize=3,
                          label=name + (f" (mean of {len(curves)} seeds)" if len(curves) > 1 else ""))
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(title + (f" (rewards smoothed over {window} steps)" if window > 1 else ""))
    figure.tight_layout()
    figure.savefig(figure_path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot sqlm.py runs (metrics.jsonl) to PNG files.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (sqlm.py --out)")
    parser.add_argument("--out", default=None, help="file prefix (default: inside the run directory, for one run)")
    parser.add_argument("--smooth", type=int, default=5, help="moving-average window for per-step curves")
    args = parser.parse_args(argv)
    if args.out is None and len(args.runs) > 1:
        raise SystemExit("error: with several runs, pass --out PREFIX for the overlay pictures.")
    loaded = [read_run(run) for run in args.runs]
    if matplotlib is None:
        raise SystemExit("error: plot.py needs matplotlib, an optional requirement: pip install matplotlib.")
    groups = defaultdict(list)  # label -> metrics of each seed
    for label, (_, metrics) in zip(run_labels([config for config, _ in loaded]), loaded):
        groups[label].append(metrics)
    # One run: pictures go inside its directory. Several: PREFIX_training.png and PREFIX_curriculum.png.
    prefix, joiner = (args.out, "_") if args.out else (str(args.runs[0]), "/")
    outputs = []
    for name, panels in (("training", TRAINING_PANELS), ("curriculum", CURRICULUM_PANELS)):
        path = Path(f"{prefix}{joiner}{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = str(args.runs[0]) if len(args.runs) == 1 else f"{len(args.runs)} runs, {len(groups)} settings"
        draw(path, panels, groups, max(1, args.smooth), f"SQLM {name}: {runs}")
        outputs.append(str(path))
    print(json.dumps({"plots": outputs}))


if __name__ == "__main__":
    main()

"""Overlay several runs: ``python experiments/compare_runs.py OUT NAME=DIR [NAME=DIR ...]``.

For each run directory (a `run_ppo.py` output_dir) it reads the tensorboard scalars with their
wall times and the held-out evaluations, and writes to ``OUT``:

* ``score_kl_vs_time.png``: the training score (``objective/scores``) and the KL to the reference
  (``objective/kl``, nats per completion) against wall-clock minutes since the run's first
  iteration, one line per run;
* ``before_after.md``: held-out toxicity, its fraction above 0.5, KL, perplexity and distinct-2
  before and after, with the iterations done and the training wall time of each run.

A plain script with flags (like ``plot.py``): it composes no config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = [
    ("toxicity_mean", "toxicity"),
    ("toxicity_frac_above_0.5", "frac > 0.5"),
    ("kl_mean", "KL (nats)"),
    ("perplexity_mean", "perplexity"),
    ("distinct_2", "distinct-2"),
    ("score_mean", "score"),
]


def read_timed(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """tag → [(wall time, value)] in step order (the last value per step, across event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                series.setdefault(tag, {})[event.step] = (event.wall_time, event.value)
    return {tag: [points[step] for step in sorted(points)] for tag, points in series.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", help="NAME=DIR")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, _, directory = spec.partition("=")
        if not directory:
            parser.error(f"runs look like NAME=DIR, got {spec!r}")
        runs[name] = Path(directory)
    args.out.mkdir(parents=True, exist_ok=True)

    fig, (score_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for name, run_dir in runs.items():
        series = read_timed(run_dir)
        if "objective/scores" not in series:
            raise SystemExit(f"{run_dir} has no objective/scores in its tensorboard logs")
        start = series["objective/scores"][0][0]
        for ax, tag in ((score_ax, "objective/scores"), (kl_ax, "objective/kl")):
            if tag in series:
                minutes = [(t - start) / 60 for t, _ in series[tag]]
                ax.plot(minutes, [v for _, v in series[tag]], label=name, marker=".")
        before = json.loads((run_dir / "eval_before.json").read_text())
        after = json.loads((run_dir / "eval_after.json").read_text())
        run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        minutes = (series["objective/scores"][-1][0] - start) / 60
        cells = [f"{before.get(k, float('nan')):.3f} → {after.get(k, float('nan')):.3f}" for k, _ in KEYS]
        rows.append(
            f"| {name} | {run.get('iterations_done', len(series['objective/scores']))} | {minutes:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    score_ax.set(title="training score (1 − toxicity + terms)", xlabel="wall-clock minutes", ylabel="objective/scores")
    kl_ax.set(title="KL to the reference", xlabel="wall-clock minutes", ylabel="objective/kl (nats)")
    for ax in (score_ax, kl_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "score_kl_vs_time.png", dpi=120)
    header = (
        "| agent | iterations | training minutes* | "
        + " | ".join(label for _, label in KEYS)
        + " |\n"
        + "|---" * (3 + len(KEYS))
        + "|\n"
    )
    table = header + "\n".join(rows) + "\n"
    from agents.checkpoint import atomic_write_text

    atomic_write_text(args.out / "before_after.md", table)
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])

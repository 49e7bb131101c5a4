"""Learning curves and a before/after table from a run directory: ``python experiments/plot.py DIR``.

Reads the tensorboard event files under ``DIR/tb`` and writes ``DIR/plots/*.png`` (``score``: the
task score beside the env reward after wrappers; each reward component, KL and its coefficient,
entropy, response length, clip fraction, plus all of them in ``learning_curves.png``). When
``DIR/eval_before.json`` and ``eval_after.json`` exist it also writes ``DIR/plots/before_after.md``
(and prints it), and when ``DIR/samples_before.json`` and ``samples_after.json`` exist, ``DIR/plots/samples.md``: the
first five held-out prompts (in eval order, not picked) with their continuations before → after.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from agents import evaluation  # noqa: E402  (the before/after table, shared with run_ppo.py)

PANELS = {
    "score": ["objective/task_score", "objective/scores"],  # the task's verdict; the env reward after wrappers
    "kl": ["objective/kl", "objective/kl_coef"],
    "entropy": ["objective/entropy", "policy/entropy"],
    "response_length": ["tokens/response_len_mean"],
    "clip_fraction": ["policy/clipfrac"],
}


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    # A resumed run writes a second event file; keep the last value per step, in step order.
    return {tag: sorted(dict(points).items()) for tag, points in series.items()}


def plot_panel(ax, series, tags, title):
    for tag in tags:
        if tag in series:
            steps, values = zip(*series[tag])
            ax.plot(steps, values, label=tag, marker="." if len(steps) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("timesteps")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def before_after_table(run_dir: Path) -> str | None:
    before, after = run_dir / "eval_before.json", run_dir / "eval_after.json"
    if not (before.exists() and after.exists()):
        return None
    return evaluation.before_after_table(json.loads(before.read_text()), json.loads(after.read_text()))


def samples_table(run_dir: Path, n: int = 5, width: int = 90) -> str | None:
    before, after = run_dir / "samples_before.json", run_dir / "samples_after.json"
    if not (before.exists() and after.exists()):
        return None
    after_by_index = {s["index"]: s for s in json.loads(after.read_text())}
    pairs = [(b, after_by_index[b["index"]]) for b in json.loads(before.read_text()) if b["index"] in after_by_index]

    def cell(text: str) -> str:
        text = text if len(text) <= width else text[:width] + "…"
        return '"' + text.replace("|", "\\|").replace("\n", "\\n") + '"'

    lines = ["| prompt | before (score) | after (score) |", "|---|---|---|"]
    for b, a in pairs[:n]:
        lines.append(
            f"| {cell(b['prompt'])} | {cell(b['completion'])} ({b['score']:.2f}) | "
            f"{cell(a['completion'])} ({a['score']:.2f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    series = read_scalars(args.run_dir)
    if not series:
        raise SystemExit(f"no tensorboard scalars under {args.run_dir / 'tb'}")
    out = args.run_dir / "plots"
    out.mkdir(exist_ok=True)
    panels = dict(PANELS)
    panels["reward_components"] = sorted(t for t in series if t.startswith("rewards/"))
    written = []
    for name, tags in panels.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        plot_panel(ax, series, tags, name.replace("_", " "))
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{name}.png")
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (name, tags) in zip(axes.flat, panels.items()):
        plot_panel(ax, series, tags, name.replace("_", " "))
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)
    written.append(out / "learning_curves.png")
    from agents.checkpoint import atomic_write_text

    table = before_after_table(args.run_dir)
    if table:
        atomic_write_text(out / "before_after.md", table)
        written.append(out / "before_after.md")
        print(table)
    samples = samples_table(args.run_dir)
    if samples:
        atomic_write_text(out / "samples.md", samples)
        written.append(out / "samples.md")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])

"""Mean and spread over seeds of several runs' evaluations: ``python experiments/summarize_seeds.py DIR...``.

Each ``DIR`` is a ``run_ppo.py`` output directory (its ``eval_before.json`` and ``eval_after.json``),
one per seed of the same config. Prints a markdown table of every metric the before/after table
shows (`agents.evaluation.TABLE_KEYS` and ``rewards/*``): mean ± sample standard deviation over the
runs before and after training, the relative change of the means, and each run's after value.
A short run's headline is such a mean over 3 seeds with its spread.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.evaluation import TABLE_KEYS  # noqa: E402


def load(directory: Path) -> tuple[dict, dict]:
    before, after = directory / "eval_before.json", directory / "eval_after.json"
    if not (before.is_file() and after.is_file()):
        raise SystemExit(f"{directory} has no eval_before.json/eval_after.json: pass run_ppo.py output directories")
    return json.loads(before.read_text()), json.loads(after.read_text())


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def table(runs: list[tuple[dict, dict]]) -> str:
    """The markdown table of `runs` (``(before, after)`` summaries, one per seed)."""
    keys = [k for k in TABLE_KEYS if all(k in b and k in a for b, a in runs)]
    keys += sorted(k for k in runs[0][1] if k.startswith("rewards/") and all(k in a for _, a in runs))
    lines = [
        f"| metric | before (mean ± std, {len(runs)} seeds) | after | change of the mean | after, per seed |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        before, after = [float(b[key]) for b, _ in runs], [float(a[key]) for _, a in runs]
        mean_before, mean_after = statistics.fmean(before), statistics.fmean(after)
        change = f"{(mean_after - mean_before) / abs(mean_before) * 100:+.1f}%" if abs(mean_before) > 1e-4 else ""
        lines.append(
            f"| {key} | {spread(before)} | {spread(after)} | {change} | {', '.join(f'{v:.4g}' for v in after)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> str:
    if not argv or any(arg.startswith("-") for arg in argv):
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    text = table([load(Path(directory)) for directory in argv])
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

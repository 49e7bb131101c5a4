"""Score a run's saved held-out samples again with today's reward: ``python experiments/rescore.py RUN_DIR...``.

    python experiments/rescore.py runs/compile runs/compile_disc --reward humaneval-cpp

Each run's ``samples_before.json`` and ``samples_after.json`` (the completions its held-out
evaluations wrote) are scored by ``rewards.make(--reward)`` and its ``metrics`` (for code:
compile_rate, degenerate_rate, test_pass_rate, pass@1). The completions are not generated again:
this tells what a changed reward (a closed loophole, a stricter compiler) says about the same
programs, not what a policy trained on it would do. Prints a markdown table; ``--out FILE`` also
writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TAGS = ("before", "after")


def rescore(run_dirs: list[str], reward_name: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{run_dir: {tag: metrics}}`` for each ``samples_<tag>.json`` the runs have."""
    import numpy as np

    import rewards

    reward = rewards.make(reward_name)
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for run in run_dirs:
            out[run] = {}
            for tag in TAGS:
                path = Path(run) / f"samples_{tag}.json"
                if not path.exists():
                    continue
                samples: list[dict[str, Any]] = json.loads(path.read_text())
                completions = [s["completion"] for s in samples]
                references = [s["reference"] for s in samples]
                prompts = [s["prompt"] for s in samples]
                scores = np.asarray(reward(completions, references, prompts), dtype=np.float64)
                metrics = {"episodes": len(samples), "score_mean": float(scores.mean()) if len(scores) else 0.0}
                if hasattr(reward, "metrics"):
                    metrics.update(reward.metrics(completions, references, scores))
                out[run][tag] = metrics
            if not out[run]:
                raise SystemExit(f"{run}: no samples_before.json or samples_after.json to score")
    finally:
        if hasattr(reward, "close"):
            reward.close()
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    keys = sorted({k for tags in results.values() for m in tags.values() for k in m if k != "episodes"})
    lines = ["| run | samples | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for run, tags in results.items():
        for tag, metrics in tags.items():
            cells = " | ".join(f"{metrics[k]:.4g}" if k in metrics else "" for k in keys)
            lines.append(f"| {run} | {tag} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (with samples_before.json / samples_after.json)")
    parser.add_argument("--reward", required=True, help="a rewards.make name, e.g. humaneval-cpp")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    results = rescore(args.runs, args.reward)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

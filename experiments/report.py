"""One HTML page that shows what a run did: ``python experiments/report.py RUN_DIR``.

Writes ``RUN_DIR/report.html``, a single self-contained file (inline CSS, JS and PNG figures; no
CDN, nothing fetched) that opens offline in any browser. ``run_ppo.py`` writes it at the end of
every run (``report: true``). It shows:

- the run's config (``config.yaml``, ``run.json``) and environment (versions, device, commit);
- learning curves from the tensorboard events under ``RUN_DIR/tb`` (`plot.read_scalars`):
  score, KL, entropy, losses, each reward term (``rewards/*``) and timings (``time/*``);
- the before → after held-out table (``eval_before.json``, ``eval_after.json``) and held-out
  samples side by side (``samples_before.json``, ``samples_after.json``);
- a **token inspector** over the episodes `agents.token_log.TokenLogCallback` logged under
  ``RUN_DIR/tokens`` (format: that module's docstring): each token coloured by a chosen quantity
  (advantage, KL, log-probs, their rollout-vs-update difference, value, entropy...), every value
  on hover, injected env tokens and pause tokens marked, turns with their rewards, and code
  verdicts. A quantity the run did not log is not offered.

The report reads files only: it never runs a model. A long run's inspector holds at most
``--max-iterations`` logged iterations (the first, the last and evenly spaced ones between).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import plot  # the tensorboard reader and curve panels of experiments/plot.py (this script's folder)

from agents import evaluation
from agents.token_log import read_token_logs

# Curve panels: title -> tags (a tag prefix ending in "/" takes every tag under it).
PANELS = {
    "task score": ["objective/scores", "rewards/score/mean"],
    "KL": ["objective/kl", "objective/kl_coef"],
    "entropy": ["objective/entropy", "policy/entropy"],
    "loss": ["loss/"],
    "reward terms": ["rewards/"],
    "timings (s)": ["time/"],
    "response length": ["tokens/response_len_mean"],
}
# How the inspector names each logged quantity, in menu order (agents.token_log's names).
QUANTITIES = {
    "advantage": "advantage",
    "kl": "per-token KL",
    "logprob": "policy log-prob (rollout)",
    "ref_logprob": "reference log-prob",
    "logprob_diff": "rollout − update log-prob",
    "update_logprob": "policy log-prob (update)",
    "value": "value",
    "entropy": "entropy",
    "token_reward": "per-token reward",
    "return": "return",
    "is_weight": "rollout correction weight",
}


def select_iterations(records: list[dict], limit: int) -> list[dict]:
    """The records of at most ``limit`` iterations: the first, the last and evenly spaced ones
    (``limit=1``: the last)."""
    iterations = sorted({r["iteration"] for r in records})
    if len(iterations) > limit:
        step = (len(iterations) - 1) / max(limit - 1, 1)
        iterations = sorted({iterations[-1 - round(i * step)] for i in range(max(limit, 0))})
    keep = set(iterations)
    return [r for r in records if r["iteration"] in keep]


def curve_figure(series: dict[str, list[tuple[int, float]]]) -> str | None:
    """The learning curves as one inline PNG (a data URI), or ``None`` without scalars."""
    import matplotlib.pyplot as plt

    panels = []
    for title, wanted in PANELS.items():
        tags = [t for t in sorted(series) if any(t == w or (w.endswith("/") and t.startswith(w)) for w in wanted)]
        if tags:
            panels.append((title, tags))
    if not panels:
        return None
    columns = 4 if len(panels) > 4 else len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, (title, tags) in zip(axes.flat, panels):
        plot.plot_panel(ax, series, tags, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def environment() -> dict[str, str]:
    """Where the report was written (at the end of a run: where the run ran)."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "torch": torch.__version__,
    }
    for name in ("transformers", "peft", "stable_baselines3", "numpy"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        info[name] = getattr(module, "__version__", "?")
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if commit:
            info["commit"] = commit + (" (with local changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _table(rows: list[list[str]], header: list[str] | None = None, cls: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def markdown_table(text: str) -> str:
    """A markdown table (`agents.evaluation.before_after_table`) as HTML."""
    lines = [line.strip().strip("|").split("|") for line in text.strip().splitlines() if line.strip()]
    header, rows = [c.strip() for c in lines[0]], [[html.escape(c.strip()) for c in line] for line in lines[2:]]
    return _table(rows, header, "numbers")


def _sample(sample: dict) -> str:
    return (
        f'<div class="text">{html.escape(sample["completion"])}</div><span class="score">{sample["score"]:.3f}</span>'
    )


def samples_section(run_dir: Path, n: int = 8) -> str:
    before, after = _read_json(run_dir / "samples_before.json"), _read_json(run_dir / "samples_after.json")
    if not before or not after:
        return ""
    after_by_index = {s["index"]: s for s in after}
    rows = []
    for b in before:
        a = after_by_index.get(b["index"])
        if a is None:
            continue
        rows.append([f'<div class="text">{html.escape(b["prompt"])}</div>', _sample(b), _sample(a)])
        if len(rows) == n:
            break
    return f"<h3>Held-out samples (the first {len(rows)} in evaluation order, not picked)</h3>" + _table(
        rows, ["prompt", "before (score)", "after (score)"], "samples"
    )


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, max_iterations: int = 24) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``) and return its path.

    :param run_dir: a run's ``output_dir`` (what ``run_ppo.py`` writes).
    :param out: where to write the page.
    :param max_iterations: at most this many logged iterations in the token inspector.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a directory: pass a run's output_dir (what run_ppo.py wrote)")
    out = Path(out) if out is not None else run_dir / "report.html"
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else None
    run = _read_json(run_dir / "run.json") or {}
    sections = []

    overview = [[html.escape(k), html.escape(str(v))] for k, v in run.items()]
    sections.append(
        '<section id="run"><h2>Run</h2>'
        + (_table(overview, cls="kv") if overview else "<p>No run.json (the run did not finish).</p>")
        + "<h3>Environment</h3>"
        + _table([[html.escape(k), html.escape(v)] for k, v in environment().items()], cls="kv")
        + (
            "<details><summary>Config (config.yaml)</summary><pre>" + html.escape(config) + "</pre></details>"
            if config
            else ""
        )
        + "</section>"
    )

    series = plot.read_scalars(run_dir) if (run_dir / "tb").exists() else {}
    figure = curve_figure(series) if series else None
    sections.append(
        '<section id="curves"><h2>Learning curves</h2>'
        + (
            f'<img alt="learning curves" src="{figure}">'
            if figure
            else f"<p>No tensorboard scalars under {html.escape(str(run_dir / 'tb'))}.</p>"
        )
        + "</section>"
    )

    before, after = _read_json(run_dir / "eval_before.json"), _read_json(run_dir / "eval_after.json")
    evals = ""
    if before and after:
        evals = markdown_table(evaluation.before_after_table(before, after))
    elif before or after:
        evals = (
            markdown_table(evaluation.before_after_table(before or after, before or after))
            + f"<p>Only eval_{'before' if before else 'after'}.json exists.</p>"
        )
    sections.append(
        '<section id="evaluation"><h2>Held-out evaluation, before → after</h2>'
        + (evals or "<p>No eval_before.json / eval_after.json.</p>")
        + samples_section(run_dir)
        + "</section>"
    )

    records = select_iterations(read_token_logs(run_dir / "tokens"), max_iterations)
    logged = [q for q in QUANTITIES if any(q in r["values"] for r in records)]
    data = {"episodes": records, "quantities": [[q, QUANTITIES[q]] for q in logged]}
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    sections.append(
        '<section id="inspector"><h2>Token inspector</h2>'
        + INSPECTOR_HTML
        + f'<script type="application/json" id="token-data">{payload}</script>'
        + "</section>"
    )

    title = f"Run report: {run_dir.resolve().name}"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body><h1>{html.escape(title)}</h1>"
        f'<nav><a href="#run">run</a> · <a href="#curves">curves</a> · <a href="#evaluation">evaluation</a> · '
        f'<a href="#inspector">token inspector</a></nav>{"".join(sections)}<script>{SCRIPT}</script></body></html>'
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;padding:8px 20px;
color:#1f2328;background:#fff}
h1{font-size:20px;margin:6px 0}h2{font-size:17px;border-bottom:1px solid #d0d7de;padding-bottom:3px;margin-top:22px}
h3{font-size:14px;margin:12px 0 4px}nav{color:#57606a}a{color:#0969da}
table{border-collapse:collapse;margin:4px 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;vertical-align:top;text-align:left}
table.numbers td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
table.samples td{max-width:420px}.text{white-space:pre-wrap}.score{color:#57606a;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px}img{max-width:100%}
#controls{display:flex;gap:16px;align-items:center;flex-wrap:wrap;position:sticky;top:0;background:#fff;
padding:6px 0;z-index:2;border-bottom:1px solid #eee}
#legend{display:flex;align-items:center;gap:6px;font-size:12px}
#legend .bar{width:160px;height:12px;border:1px solid #ccc}
.episode{border:1px solid #d0d7de;border-radius:6px;margin:10px 0;padding:6px 10px}
.episode header{font-size:12px;color:#57606a;margin-bottom:4px;display:flex;gap:10px;flex-wrap:wrap}
.badge{border-radius:10px;padding:0 7px;font-size:11px;color:#fff;background:#6e7781}
.badge.passed{background:#1a7f37}.badge.failing_test{background:#bf8700}.badge.compile_error{background:#cf222e}
.tokens{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:2px;padding:1px 0}.tok.prompt{color:#8c959f}
.tok.injected{border-bottom:2px dashed #8250df;background:#fbefff;color:#6639ba}
.prompt-block{display:block;max-height:7.6em;overflow-y:auto;border-left:3px solid #d0d7de;padding-left:6px}
.tok.pause{outline:2px solid #0550ae;font-weight:bold}
.turn{display:block;font:11px system-ui,sans-serif;color:#57606a;margin:4px 0 1px;border-top:1px dotted #d0d7de}
.seg-label{font:10px system-ui,sans-serif;color:#8250df;margin:0 2px;vertical-align:super}
#tooltip{position:fixed;pointer-events:none;background:#1f2328;color:#fff;font:12px ui-monospace,monospace;
padding:6px 8px;border-radius:4px;display:none;z-index:5;white-space:pre}
.key{font-size:12px;color:#57606a}.key span{margin-right:12px}
"""

INSPECTOR_HTML = """
<p class="key">Episodes logged during training (a few per iteration, the first rows of each batch). Tokens
are coloured by the chosen quantity (blue: negative, red: positive; one colour for a one-signed quantity);
hover a token for every value.
<span><span class="tok prompt">grey</span>: prompt</span>
<span><span class="tok injected">underlined</span>: injected by the env</span>
<span><span class="tok pause">boxed</span>: pause token</span></p>
<div id="controls">
<label>colour by <select id="quantity"></select></label>
<label>iteration <select id="iteration"><option value="all">all</option></select></label>
<span id="legend"><span id="legend-min"></span><span class="bar" id="legend-bar"></span>
<span id="legend-max"></span></span>
<span id="counts"></span>
</div>
<div id="episodes"></div>
<div id="tooltip"></div>
"""

SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("token-data").textContent);
  const episodes = data.episodes, names = Object.fromEntries(data.quantities);
  const qSelect = document.getElementById("quantity"), itSelect = document.getElementById("iteration");
  const root = document.getElementById("episodes"), tooltip = document.getElementById("tooltip");
  const fmt = v => (v === null || v === undefined) ? "–" : (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001)
    ? v.toExponential(2) : v.toFixed(4));
  if (!episodes.length) {
    root.innerHTML = "<p>No episodes were logged in this run (tokens/ is empty: an SFT run, or report_episodes=0).</p>";
    document.getElementById("controls").style.display = "none";
    return;
  }
  for (const [key, label] of data.quantities) qSelect.add(new Option(label, key));
  if (!data.quantities.length) qSelect.add(new Option("(none logged)", ""));
  const iterations = [...new Set(episodes.map(e => e.iteration))].sort((a, b) => a - b);
  for (const it of iterations) itSelect.add(new Option(String(it), String(it)));
  const spans = [];  // [episode index, action index or -1, span]
  episodes.forEach((ep, e) => {
    const box = document.createElement("div");
    box.className = "episode";
    box.dataset.iteration = ep.iteration;
    const info = ep.info || {}, head = document.createElement("header");
    const parts = [`iteration ${ep.iteration}`, `row ${ep.row}`, `score ${fmt(ep.score)}`,
                   `env reward ${fmt(ep.env_reward)}`, ep.terminated ? "ended with EOS" : "cut at the token budget"];
    if (info.turns !== undefined) parts.push(`${info.turns} turn${info.turns === 1 ? "" : "s"}`);
    if (info.tool_calls) parts.push(`${info.tool_calls} tool call${info.tool_calls === 1 ? "" : "s"}`);
    for (const p of parts) { const s = document.createElement("span"); s.textContent = p; head.appendChild(s); }
    for (const key of ["first_verdict", "verdict"]) {
      if (!info[key]) continue;
      const b = document.createElement("span");
      b.className = "badge verdict " + info[key];
      b.textContent = (key === "first_verdict" ? "first attempt: " : "") + info[key].replace("_", " ");
      head.appendChild(b);
    }
    box.appendChild(head);
    const body = document.createElement("div");
    body.className = "tokens";
    // Turns: the env's turn_ends (each turn's last action) when it gives them; else runs of actions
    // between injections, when each injection opens a new turn (as many runs as turns). Each turn
    // gets a label with its reward when the episode has one.
    const kinds = ep.kinds, ends = Array.isArray(info.turn_ends) ? info.turn_ends : null;
    let runs = 0;
    for (let i = 0; i < kinds.length; i++)
      if ((kinds[i] === "a" || kinds[i] === "z") && (i === 0 || !"az".includes(kinds[i - 1]))) runs++;
    const turns = info.turns || 1, labelTurns = ends ? ends.length > 1 : turns > 1 && runs === turns;
    const startsTurn = (i, a) => ends ? (a === 0 || ends.includes(a - 1))
                                      : (i === 0 || !"az".includes(kinds[i - 1]));
    const turnReward = t => {
      if (Array.isArray(info.turn_rewards) && info.turn_rewards[t] !== undefined) return info.turn_rewards[t];
      if (t === 0 && info.first_score !== undefined) return info.first_score;
      if (t === turns - 1) return ep.score;
      return undefined;
    };
    let action = 0, run = -1, promptBlock = null;
    for (let i = 0; i < kinds.length; i++) {
      const k = kinds[i], isAction = k === "a" || k === "z";
      if (isAction && startsTurn(i, action)) {
        run++;
        if (labelTurns) {
          const label = document.createElement("span");
          label.className = "turn";
          const r = turnReward(run);
          label.textContent = `turn ${run + 1}` + (r !== undefined ? ` · reward ${fmt(r)}` : "");
          body.appendChild(label);
        }
      }
      if (k === "e" && (i === 0 || kinds[i - 1] !== "e")) {
        const label = document.createElement("span");
        label.className = "seg-label";
        label.textContent = "env";
        body.appendChild(label);
      }
      const span = document.createElement("span");
      span.className = "tok " + ({p: "prompt", a: "action", z: "action pause", e: "injected"}[k] || "");
      span.textContent = ep.tokens[i];
      span.dataset.episode = e;
      span.dataset.token = i;
      if (isAction) span.dataset.action = action;
      spans.push([e, isAction ? action : -1, span, k]);
      if (isAction) action++;
      if (k === "p") {  // the prompt: a short scrolling block, opened at its end
        if (!promptBlock) { promptBlock = document.createElement("span"); promptBlock.className = "prompt-block";
                            body.appendChild(promptBlock); }
        promptBlock.appendChild(span);
      } else body.appendChild(span);
    }
    box.appendChild(body);
    root.appendChild(box);
    if (promptBlock) promptBlock.scrollTop = promptBlock.scrollHeight;
  });
  function scale(q) {
    let lo = 0, hi = 0;
    for (const ep of episodes)
      for (const v of (ep.values[q] || [])) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    return [lo, hi];
  }
  function colour(v, lo, hi) {
    if (v === null || v === undefined) return "";
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1, a = Math.min(1, Math.abs(v) / m) * 0.85;
    return v < 0 ? `rgba(37,99,235,${a.toFixed(3)})` : `rgba(220,38,38,${a.toFixed(3)})`;
  }
  function paint() {
    const q = qSelect.value, [lo, hi] = scale(q);
    for (const [e, a, span, k] of spans) {
      if (a < 0) { span.style.backgroundColor = ""; continue; }
      const values = episodes[e].values[q];
      span.style.backgroundColor = values ? colour(values[a], lo, hi) : "";
    }
    document.getElementById("legend-min").textContent = fmt(lo);
    document.getElementById("legend-max").textContent = fmt(hi);
    const left = lo < 0 ? "rgba(37,99,235,.85)" : "#fff", right = hi > 0 ? "rgba(220,38,38,.85)" : "#fff";
    document.getElementById("legend-bar").style.background = `linear-gradient(to right, ${left}, #fff, ${right})`;
  }
  function filter() {
    const it = itSelect.value;
    let shown = 0, tokens = 0;
    root.querySelectorAll(".episode").forEach((box, e) => {
      const on = it === "all" || box.dataset.iteration === it;
      box.style.display = on ? "" : "none";
      if (on) { shown++; tokens += episodes[e].tokens.length; }
    });
    document.getElementById("counts").textContent = `${shown} episodes, ${tokens} tokens`;
  }
  root.addEventListener("mouseover", ev => {
    const span = ev.target.closest(".tok");
    if (!span) return;
    const ep = episodes[+span.dataset.episode], k = ep.kinds[+span.dataset.token];
    const lines = [JSON.stringify(span.textContent) + `  id ${ep.ids[+span.dataset.token]}`,
                   {p: "prompt", a: "action", z: "action (pause token)", e: "injected by the env"}[k]];
    if (span.dataset.action !== undefined) {
      lines.push(`action #${span.dataset.action}`);
      for (const [q, label] of data.quantities)
        if (ep.values[q]) lines.push(`${label.padEnd(28)} ${fmt(ep.values[q][+span.dataset.action])}`);
    }
    tooltip.textContent = lines.join("\n");
    tooltip.style.display = "block";
  });
  root.addEventListener("mousemove", ev => {
    tooltip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tooltip.offsetWidth - 4) + "px";
    tooltip.style.top = Math.min(ev.clientY + 14, window.innerHeight - tooltip.offsetHeight - 4) + "px";
  });
  root.addEventListener("mouseout", ev => { if (ev.target.closest(".tok")) tooltip.style.display = "none"; });
  qSelect.addEventListener("change", paint);
  itSelect.addEventListener("change", filter);
  if (names.advantage) qSelect.value = "advantage";
  paint();
  filter();
})();
"""


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's output_dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write the page (default RUN_DIR/report.html)")
    parser.add_argument(
        "--max-iterations",
        type=int,
        default=24,
        help="at most this many logged iterations in the token inspector (default 24)",
    )
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.out, args.max_iterations)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])

"""The documentation: every ```python block of README.md and docs/*.md runs, and the site builds.

Each page's python blocks run in order in one namespace, as a reader would paste them one after
another. The embedded model is swapped for the tiny random model of `conftest.py` (``load_lm()``
and ``load_lm("smollm2-135m-instruct")`` return it), so an example that trains runs in seconds;
everything else (data, envs, rewards, agents, files) is real. Files go to a temporary directory.

A block that cannot run standalone is marked by an HTML comment on the line right before it,
``<!-- skip-example: why -->``; such blocks are counted and reported, and there may be only a few
(`MAX_SKIPPED`). ``mkdocs build --strict`` (also run by ``make docs`` and ``make test``) fails on a
broken link, a missing anchor or page, or an API reference that does not resolve.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP = re.compile(r"^<!--\s*skip-example:\s*(\S.*?)\s*-->$")
MAX_SKIPPED = 3


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line number, code, skip reason or None)`` for every ```python block of a markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = next((lines[j].strip() for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            match = SKIP.match(previous)
            blocks.append((start, "\n".join(body) + "\n", match.group(1) if match else None))
        i += 1
    return blocks


def all_blocks() -> list[tuple[Path, int, str, str | None]]:
    return [(page, *block) for page in PAGES for block in python_blocks(page)]


@pytest.fixture
def tiny_embedded(tiny_dir, monkeypatch, tmp_path):
    """``load_lm`` of the embedded model (by default or by name) loads the tiny model instead."""
    import policies.loading as loading

    real = loading.load_lm

    def load_lm(spec: str = loading.DEFAULT_MODEL, *args, **kwargs):
        return real(str(tiny_dir) if spec in loading.EMBEDDED_MODELS else spec, *args, **kwargs)

    for module in list(sys.modules.values()):  # every `from policies... import load_lm` binding
        if getattr(module, "__dict__", {}).get("load_lm") is real:
            monkeypatch.setattr(module, "load_lm", load_lm)
    monkeypatch.chdir(tmp_path)
    # Examples register their own rewards: keep those registrations out of the other tests.
    import rewards

    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))


def test_pages_have_examples_and_few_skips():
    blocks = all_blocks()
    assert len(blocks) >= 8, "the docs should show code"
    skipped = [(page.name, line, reason) for page, line, _, reason in blocks if reason]
    for name, line, reason in skipped:
        warnings.warn(f"docs example not run: {name}:{line} ({reason})", stacklevel=2)
    print(f"{len(blocks)} python examples, {len(skipped)} skipped: {skipped}")
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_examples_run(page, tiny_embedded):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code, reason in python_blocks(page):
        if reason:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(
                f"the example at {page.relative_to(REPO)}:{line} failed: {type(err).__name__}: {err}"
            ) from err


def test_site_builds_in_strict_mode(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[test]' installs it")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_api_reference_splits_multi_name_param_fields():
    """The griffe extension of mkdocs.yml turns ``:param a, b: text`` into one field per name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "griffe_multi_params", REPO / "docs" / "hooks" / "griffe_multi_params.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Intro.\n\n:param x: one.\n:param a, b,\n    c: shared,\n    continued.\n:param y: last.\n"
    assert module.split_fields(text).splitlines() == [
        "Intro.",
        "",
        ":param x: one.",
        ":param a: shared,",
        "    continued.",
        ":param b: shared,",
        "    continued.",
        ":param c: shared,",
        "    continued.",
        ":param y: last.",
    ]


def test_readme_links_point_at_files():
    """README.md is not a page of the site, so mkdocs does not check it: its relative links must exist."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert relative, "the README should link into the docs"
    missing = [link for link in relative if not (REPO / link).exists()]
    assert not missing, missing

"""HumanEval-X C++: `HumanEvalCppReward` (g++, each `assert` of the tests' `main` one test) and
`build_cpp_pch`, the cached precompiled <bits/stdc++.h> that makes each compile about 4x faster."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rewards import multipl_e
from rewards.code.compiled import _CompiledCodeReward
from rewards.sandbox import Job, Sandbox, command_job


def _cache_dir() -> Path:
    # The same user cache as the embedded model's (policies.loading.cache_dir).
    env = os.environ.get("LM_SB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lm_stable_baselines"


CPP_FLAGS = ("-std=c++17", "-O0")
# The candidate's compile: control reaching the end of a non-void function is an error (other
# warnings are printed, not errors); the other compiles (the checker, the plan's check) use -w.
STRICT_FLAGS = ("-Werror=return-type",)


def build_cpp_pch(cache_dir: str | os.PathLike | None = None, compiler: str = "g++") -> Path | None:
    """Build (once per machine) a precompiled <bits/stdc++.h> for CPP_FLAGS; returns the include
    dir to put first on the path, or None when g++ or a writable cache is missing. Cuts each
    MultiPL-E compile about 4x, since every prompt includes that header."""
    gxx = shutil.which(compiler)
    if gxx is None:
        return None
    try:
        probe = subprocess.run(
            [gxx, *CPP_FLAGS, "-x", "c++", "-E", "-H", "-o", os.devnull, "-"],
            input=b"#include <bits/stdc++.h>\n",
            capture_output=True,
            timeout=60,
        )
        header = next(
            line.split(" ", 1)[1]
            for line in probe.stderr.decode().splitlines()
            if line.startswith(". ") and line.endswith("bits/stdc++.h")
        )
        version = subprocess.run([gxx, "--version"], capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, StopIteration, IndexError):
        return None
    key = hashlib.sha256(version + repr((CPP_FLAGS, header, os.stat(header).st_mtime)).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else _cache_dir()
    final = root / f"cpp-pch-{key}"
    if (final / "bits" / "stdc++.h.gch").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="cpp-pch-tmp-", dir=root))
        (tmp / "bits").mkdir()
        os.symlink(header, tmp / "bits" / "stdc++.h")  # a PCH that gcc rejects falls back to this
        subprocess.run(
            [gxx, *CPP_FLAGS, "-x", "c++-header", header, "-o", str(tmp / "bits" / "stdc++.h.gch")],
            check=True,
            capture_output=True,
            timeout=600,
        )
        for p in (tmp, tmp / "bits", tmp / "bits" / "stdc++.h.gch"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        try:
            os.rename(tmp, final)  # atomic: a concurrent builder either wins or loses whole
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return final if (final / "bits" / "stdc++.h.gch").is_file() else None
    except (OSError, subprocess.SubprocessError):
        return None


class HumanEvalCppReward(_CompiledCodeReward):
    """HumanEval-X C++ (MultiPL-E): `g++ -std=c++17 -O0 -Werror=return-type` of the candidate's
    translation unit and the harness's, then run; each `assert` of the tests' `main` is one test.
    `pch=True` uses a cached precompiled <bits/stdc++.h> (built on first use, see `build_cpp_pch`)."""

    name = "humaneval-cpp"
    language = "cpp"
    CANARY = (
        "    for (auto& x : xs) x += y;\n    return xs;\n",
        {
            "name": "canary_add_all",
            "stop_tokens": ["\n}"],
            "prompt": "#include<assert.h>\n#include<bits/stdc++.h>\n// Add y to every element.\n"
            "std::vector<long> add_all(std::vector<long> xs, long y) {\n",
            "tests": "}\nint main() {\n    auto candidate = add_all;\n"
            "    assert(candidate((std::vector<long>({(long)1, (long)2})), (3)) == "
            "(std::vector<long>({(long)4, (long)5})));\n"
            "    assert(candidate((std::vector<long>()), (1)) == (std::vector<long>()));\n}\n",
        },
    )

    def __init__(self, *args: Any, pch: bool = True, compiler: str = "g++", **kwargs: Any) -> None:
        self.compiler = compiler
        self.pch = pch
        self.pch_dir: Path | None = None
        super().__init__(*args, **kwargs)

    def make_sandbox(self) -> Sandbox:
        # First use: build the PCH (seconds, once per machine) before the server starts, so the
        # server can share its directory read-only with every compile.
        if self.pch and self.pch_dir is None:
            self.pch_dir = build_cpp_pch(compiler=self.compiler)
        return Sandbox(
            workers=self.workers,
            shared_dirs=[str(self.pch_dir)] if self.pch_dir else (),
            allow_unsandboxed=self.allow_unsandboxed,
        )

    def parse_record(self, reference: Any) -> multipl_e.Plan:
        return multipl_e.cpp_plan(reference)

    def _gxx(self, *args: str, strict: bool = False) -> list[str]:
        # -w silences every warning, and would silence -Werror=return-type with them (gcc 12).
        cmd = [self.compiler, *CPP_FLAGS, *(STRICT_FLAGS if strict else ("-w",))]
        inside = self.sandbox.shared_path(str(self.pch_dir)) if self.pch_dir else None
        if inside:
            cmd += ["-I", inside, "-include", "bits/stdc++.h"]
        return cmd + list(args)

    def plan_job(self, plan: multipl_e.Plan) -> Job:
        files = {"harness.cpp": plan.harness, "stub.cpp": plan.stub, "checker.cpp": plan.checker}
        steps = [
            self._gxx("-fsyntax-only", "harness.cpp", "stub.cpp"),
            self._gxx("-o", "checker", "checker.cpp"),
            ["./checker"],
        ]
        return command_job(steps, files, [self.compile_limits(), self.compile_limits(), self.limits])

    def job(self, code: str, plan: multipl_e.Plan) -> Job:
        files = {"main.cpp": plan.candidate_prefix + code + plan.candidate_suffix, "harness.cpp": plan.harness}
        # A value-returning function that can end without `return` is undefined behaviour: the
        # caller reads whatever is in the return register, which matches some expected values by
        # chance (a body of comments scored 0.54 or 0.66 of its tests, run to run). Refused, as
        # javac refuses a missing return.
        return command_job(
            [self._gxx("-o", "prog", "main.cpp", "harness.cpp", strict=True), ["./prog"]],
            files,
            [self.compile_limits(), self.limits],
        )

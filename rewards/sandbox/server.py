"""The fork server: runs model-written programs, one fresh process per program, many at once.

Started by `rewards.sandbox.client.Sandbox` as its own script (`python3 -I -S -B server.py
--serve CONFIG`), normally inside the bubblewrap jail that `rewards.sandbox.jail` describes.
It never imports the `rewards` package: only the standard library, `protocol` (the wire
format) and the `forkserver` package, both loaded from this file's directory, which the jail
mounts at /lmsb. This script only starts them; the code is in `forkserver`, one module per
concern (see its docstring).

Process tree inside the jail (the jail itself: new user/pid/ipc/net/uts namespaces, no
capabilities, no_new_privs, a read-only minimal filesystem, a private tmpfs /tmp):

    server      reads jobs (JSON frames on fd 0), hands them to monitors, relays results (fd 1);
     │          joins a fresh, empty session keyring first (the trainer's is out of reach)
     └─ monitor   one per worker slot: a fresh interpreter (posix_spawn of this script, never a fork
        │         of the server, which holds the queue), started again if it dies; its own nested
        │         user namespace (mapped to nobody; it holds the capabilities the jail lacks) and
        │         mount namespace, no further user namespaces below it, /proc covered. It reads
        │         only each job's header (id, limits, step kinds, the shared prelude) from one
        │         pipe; the job itself (sources, argv, files, inputs) waits in a second pipe for the
        │         process that runs it. Per job: a fresh size-capped tmpfs over /tmp (unmounting
        │         it is the clean-up), the wall clock, output caps; it kills and reaps the rest
        ├─ runner   (command chains only) a fork of the monitor that reads its job, one frame
        │  │        exactly, and runs the steps below as the monitor would
        └──┴─ program  one raw clone(2) per step into new pid + ipc namespaces (commands: + mount,
                    with a /proc of their own pid namespace, /proc/keys masked; Python: no /proc at
                    all; a Python program reads its own job from the pipe after the clone); pid 1
                    there, so its end kills all it started; rlimits (CPU, address space,
                    processes, file size, fds, RLIMIT_CORE 1), every capability dropped,
                    no_new_privs, scrubbed environment, fds 0-3 only; last, the host-compiled
                    seccomp filter (`rewards.sandbox.syscall_filter`); then Python (exec of the
                    source in a fresh __main__, compiled harness prelude first) or execve

So no process that runs a program ever held another job: the monitor it is forked from never
read one, and it read only its own, exactly, after the fork.
When the program (pid 1) ends, the kernel kills everything else in its pid namespace, and
its IPC namespace (SysV IPC, message queues) goes with it: no IPC object survives a job.
Besides stdout/stderr every program gets a result channel on fd 3 (`RESULT_FD`).

Without a jail (`allow_unsandboxed=True` on the host) the same server runs as a plain process:
no namespaces, only rlimits, the output caps and a Python audit hook (not a boundary).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Each process imports only its own half: the server never loads the monitor's code, nor a
# monitor the server's.
if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    from forkserver.event_loop import _serve_main

    _serve_main(sys.argv[2:])
elif __name__ == "__main__" and sys.argv[1:2] == ["--monitor"]:
    from forkserver.monitor import _monitor_main

    _monitor_main(sys.argv[2:])

"""Run untrusted, model-written programs inside a bubblewrap jail, through a warm fork server.

Modules: `protocol` (the JSON wire format), `jail` (the bubblewrap command line and whether it
can run here), `syscall_filter` (the per-program seccomp filter, compiled on the host),
`server` (the fork server's script, run as its own interpreter inside the jail) and
`forkserver` (its code, one module per concern; neither imports this package nor `rewards`),
`client` (`Sandbox`, job builders, result types).
See `server`'s docstring for the process tree and `jail`'s for what the jail exposes.
Imports: standard library and `rewards.errors`.
"""

from rewards.errors import SandboxError
from rewards.sandbox.client import (
    CHANNEL_BYTES,
    RESULT_FD,
    Job,
    Limits,
    RunResult,
    Sandbox,
    command_job,
    default_sandbox,
    map_python,
    python_job,
    run_command,
    run_python,
)

__all__ = [
    "CHANNEL_BYTES",
    "RESULT_FD",
    "Job",
    "Limits",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "command_job",
    "default_sandbox",
    "map_python",
    "python_job",
    "run_command",
    "run_python",
]

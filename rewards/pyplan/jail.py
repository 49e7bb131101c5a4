"""What the jail runs for a Python test record: the sandbox prelude `HARNESS`.

It is read from two real files of this package, so a linter and the tests check them as code:
`encoder.py` (`ENCODER_SOURCE`, also imported by the host) and then `jail_harness.py`. Each
sandbox worker compiles the prelude once; a job's program is then one call,
``_lmsb_main(source, calls, setup)`` (see `rewards.code.python`).
"""

from __future__ import annotations

from importlib import resources


def _source(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


ENCODER_SOURCE = _source("encoder.py")  # executed here (for arguments) and in the jail (for results)
HARNESS = ENCODER_SOURCE + _source("jail_harness.py")  # the jail half: defines `_lmsb_main`

__all__ = ["ENCODER_SOURCE", "HARNESS"]

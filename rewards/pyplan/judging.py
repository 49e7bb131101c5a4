"""Pass 2, on the host: read the jail's result channel and judge each test against it.

`parse_channel` turns the jail's lines into per-call outputs, ignoring malformed or forged ones;
`judge` runs the record's test code again, unchanged (asserts included), with each candidate
function replaced by a replayer that returns the decoded jail output for the call with the same
name and arguments. A unit whose code finishes without an exception passed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from rewards.pyplan.planning import (
    JailGlobal,
    PyPlan,
    Unsupported,
    encode_args,
    exec_setup,
    seeded,
)
from rewards.pyplan.values import MAX_CHANNEL_CHARS, DecodeBudget, Opaque, decode

# Exceptions a replayed call may raise on the host (test code sometimes expects one); any other
# name the jail reports becomes `CandidateError`.
_EXCEPTIONS = {
    e.__name__: e
    for e in (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        ZeroDivisionError,
        AttributeError,
        RecursionError,
        OverflowError,
        NotImplementedError,
        ArithmeticError,
        LookupError,
        RuntimeError,
        AssertionError,
    )
}


class CandidateError(Exception):
    """A candidate call raised something, or produced no usable output."""


def _opaque_ref(v: Any) -> Any:
    if type(v) is JailGlobal:
        return {"$global": v.name}
    return {"$o": v.kind} if type(v) is Opaque else None


def _matches(recorded: Any, actual: Any) -> bool:
    if isinstance(recorded, dict) and set(recorded) == {"$ref"}:
        return True  # the jail passed its own earlier result here
    if isinstance(recorded, list):
        return (
            isinstance(actual, list)
            and len(recorded) == len(actual)
            and all(_matches(r, a) for r, a in zip(recorded, actual))
        )
    if isinstance(recorded, dict):
        return (
            isinstance(actual, dict)
            and recorded.keys() == actual.keys()
            and all(_matches(recorded[k], actual[k]) for k in recorded)
        )
    return (
        type(recorded) is type(actual)
        and recorded == actual
        or (isinstance(recorded, float) and isinstance(actual, float) and recorded != recorded and actual != actual)
    )


def parse_channel(channel: str, max_lines: int | None = None) -> tuple[bool | None, dict[int, tuple[str, Any]]]:
    """(compiled flag, {call index: ("v", value) | ("e", exception name)}) from the jail's lines.
    Lines that are not well-formed are ignored; a call reported twice differently counts as
    no output. Only the first `MAX_CHANNEL_CHARS` characters are read, and a channel of more than
    `max_lines` lines (`PyPlan.channel_lines`: the harness writes the compiled flag and one line
    per call) gives no call any output: the program wrote to the channel itself, and reading
    only the first lines would let its forged lines push the harness's out of sight."""
    compiled: bool | None = None
    out: dict[int, tuple[str, Any]] = {}
    bad: set[int] = set()
    lines = channel[:MAX_CHANNEL_CHARS].splitlines()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:1]  # the compiled flag, written before the candidate's code ran
    for line in lines:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(msg, dict):
            continue
        if compiled is None and set(msg) == {"compiled"} and isinstance(msg["compiled"], bool):
            compiled = msg["compiled"]
            continue
        k = msg.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or len(msg) != 2:
            continue
        if "v" in msg:
            entry: tuple[str, Any] = ("v", msg["v"])
        elif isinstance(msg.get("e"), str):
            entry = ("e", msg["e"])
        else:
            continue
        if k in out and out[k] != entry:
            bad.add(k)
        out.setdefault(k, entry)
    for k in bad:
        out.pop(k, None)
    return compiled, out


def judge(plan: PyPlan, outputs: Mapping[int, tuple[str, Any]], record: str) -> list[bool]:
    """Pass 2: run each test unit on the host against the jail's outputs; one bool per test."""
    by_unit: dict[int, list[int]] = {}
    for k, (u, _, _) in enumerate(plan.calls):
        by_unit.setdefault(u, []).append(k)
    cursor = {u: 0 for u in by_unit}
    unit = [0]
    budget = DecodeBudget()  # for all of this completion's outputs together

    def replayer(name: str) -> Any:
        def replay(*args: Any, **kwargs: Any) -> Any:
            u = unit[0]
            ks = by_unit.get(u, [])
            try:
                actual = encode_args(args, kwargs, _opaque_ref, strict_plain=False)
            except (Unsupported, ValueError, TypeError, RecursionError):
                actual = None
            for pos in range(cursor.get(u, 0), len(ks)):
                k = ks[pos]
                _, rec_name, rec_args = plan.calls[k]
                if rec_name == name and actual is not None and _matches(rec_args, actual):
                    cursor[u] = pos + 1
                    break
            else:
                raise CandidateError(f"no jail output for this call of {name}")
            kind, value = outputs.get(k, ("e", "missing"))
            if kind == "e":
                raise _EXCEPTIONS.get(value, CandidateError)(f"candidate raised {value}")
            try:
                return decode(value, budget=budget)
            except (ValueError, TypeError, RecursionError):
                raise CandidateError("undecodable output, or past the judge's bounds") from None

        return replay

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = [compile(u, f"<{record} test>", "exec") for u in plan.units]
    verdicts: dict[int, bool] = {}
    with seeded():
        ns = exec_setup(plan.setup, record)
        for name in plan.jail_globals:
            ns[name] = JailGlobal(name)
        for name in plan.names:
            ns[name] = replayer(name)
        for i, code in enumerate(compiled):
            unit[0] = i
            try:
                exec(code, ns)  # noqa: S102 - the record's test code, on decoded plain data
                ok = True
            except Exception:  # noqa: BLE001 - a failed assert, a candidate error, anything: failed
                ok = False
            verdicts[i] = ok
    return [verdicts[i] for i in plan.tests]

"""Python test records (MBPP asserts, HumanEval `check`) split into what runs in the jail and
what stays on the host.

The jail only ever runs the candidate's code and calls it on plain-data inputs; the expected
values and every comparison stay here. For one record:

1. **Plan** (host, once per record): the record's test code runs here with each candidate
   function replaced by a recorder. Every assert is neutralised to "evaluate the condition,
   ignore the outcome", and a recorder call returns a `Pending` placeholder that absorbs
   whatever the test does with it. What remains is the list of candidate calls: the function
   name and its arguments, serialised to plain data. An argument that is itself the result of an
   earlier candidate call (e.g. `candidate(candidate(x))`, `f([Pair(1, 2)])`) becomes a
   reference to that call's result, which the jail resolves to its own object.
2. **Run** (jail): the harness (`HARNESS`, a sandbox prelude) compiles and executes the
   candidate's source, makes the calls in order and writes one JSON line per call to the
   result channel: the return value, serialised by type (`ENCODER_SOURCE`), or the name of the
   exception it raised. Nothing else of the record enters the jail.
3. **Judge** (host): the test code runs again, unchanged (asserts included), with each candidate
   function replaced by a replayer that returns the decoded jail output for the call with the
   same name and arguments. A unit whose code finishes without an exception passed.

Values cross the boundary as tagged JSON: None, bool, int, float (nan/inf tagged), str, list,
tuple, dict, set, frozenset and bytes; subclasses of these are serialised as their base type
(so an `int` subclass whose `__eq__` always returns True arrives as a plain int), and any other
object arrives as an `Opaque` that equals nothing. A candidate that forges channel lines,
exits early or never returns can only supply or withhold its own return values.

Supported: any test code whose candidate calls take arguments built from plain data (literals,
loops, helpers of the prompt or the test, seeded or unseeded `random`: both passes run with
the same fixed seed, and the trainer's `random` state is restored), plus results of earlier
candidate calls passed back in. An MBPP `test_setup_code` that uses the solution's own classes
(input construction, e.g. `Node` trees) runs in the jail after the candidate's code, and the
host passes the names it binds (`JailGlobal`). Not supported, and dropped from the record's tests when planned
(`PyPlan.dropped`): a unit whose candidate-call arguments hold other objects (functions,
classes, generators) or values computed from a candidate result (e.g. `candidate(candidate(x)
+ 1)`). A test that checks how the candidate mutated its arguments sees the unmutated host copy
and fails. A record with no supported test left, or with test code that does not parse or run,
is a `MalformedRecordError`.

By concern: `planning` (pass 1, `PyPlan`), `jail` (the prelude `HARNESS`, read from the real
files `encoder.py` and `jail_harness.py`), `values` (tagged JSON and the judge's bounds),
`judging` (the channel and pass 2) and `records` (MBPP and HumanEval records).
Imports: standard library and `rewards.errors`.
"""

from __future__ import annotations

from rewards.pyplan.jail import ENCODER_SOURCE, HARNESS
from rewards.pyplan.judging import CandidateError, judge, parse_channel
from rewards.pyplan.planning import SEED, JailGlobal, Pending, PyPlan, build_plan
from rewards.pyplan.records import humaneval_plan, mbpp_plan
from rewards.pyplan.values import (
    MAX_CHANNEL_CHARS,
    MAX_DEPTH,
    MAX_LARGE_HASHABLES,
    MAX_SAME_HASH,
    MAX_VALUES,
    SMALL_HASHABLE,
    DecodeBudget,
    Opaque,
    decode,
    make_encoder,
)

__all__ = [
    "PyPlan",
    "HARNESS",
    "ENCODER_SOURCE",
    "build_plan",
    "mbpp_plan",
    "humaneval_plan",
    "judge",
    "parse_channel",
    "decode",
    "DecodeBudget",
    "Opaque",
    "CandidateError",
    "JailGlobal",
    "Pending",
    "make_encoder",
    "SEED",
    "MAX_CHANNEL_CHARS",
    "MAX_VALUES",
    "MAX_DEPTH",
    "SMALL_HASHABLE",
    "MAX_LARGE_HASHABLES",
    "MAX_SAME_HASH",
]

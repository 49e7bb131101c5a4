"""MultiPL-E (HumanEval-X C++ and Java) records split into a candidate program, a harness that
calls it, and a checker that holds the expected values; and the comparison of their outputs.

A MultiPL-E test is `main` with one `assert(f(ARGS) == EXPECTED);` (or, in Java,
`assert(f(ARGS).equals(EXPECTED));`) per line. For each record:

- the **candidate program** is the prompt, the completion and the closing brace(s): nothing of
  the tests. In C++ it is its own translation unit (`main.cpp`), so its macros cannot reach the
  harness; in Java it is its own class (`Problem`, or whatever the prompt names).
- the **harness** (`harness.cpp` / `LmsbHarness.java`) is compiled with it and calls `f(ARGS)`
  for each assert, writing the result as one line of tagged JSON to the result channel (fd 3).
  Its code has internal linkage (an anonymous namespace) or lives in a separate final class;
  the candidate can at most call it, which only lets it report values of its own choosing.
- the **checker** (`checker.cpp` / `LmsbExpected.java`) is a separate program, built and run once
  per record (in the sandbox, without any candidate code): it evaluates each EXPECTED with the
  same serialiser. The host compares the two JSON values; expected values never enter the
  candidate's process.

Serialisation is by static type: integers and floating point as JSON numbers (floating point
as the exact double, `%.17g` / `Double.toString`, nan and infinities tagged), bool, strings
(bytes >= 0x80 / UTF-16 units >= 0x7f escaped), vector / List as arrays, tuple / pair /
javatuples as `{"$t": [...]}`, optional (C++: the value or null; Java: `{"$opt": [...]}`), map
/ Map and Set with their entries sorted. Anything else in C++ does not compile (the record is
reported malformed when planned: the three MultiPL-E `Union_*` records); in Java it becomes
`{"$o": class}`, which equals nothing. Equality is then JSON equality, which matches the
test's `==` / `.equals` for these types.

The serialiser the harness and the checker share is shipped as real source files, which a
compiler checks on their own: `rewards/harness/lmsb_serializer.cpp` (`CPP_SERIALIZER`) and
`rewards/harness/LmsbSerializer.java` (`JAVA_SERIALIZER`, the members of its class); the plans
paste their code below the `pasted from here` marker into each record's sources.

Asserts of another shape are dropped from the record's tests (`Plan.dropped`); a record with
none left is a `MalformedRecordError`. Imports: standard library and `rewards.errors`.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import MalformedRecordError

_ASSERT_LINE = re.compile(r"^\s*assert\s*\((?P<body>.*)\)\s*;\s*$")
_PASTE_FROM, _PASTE_TO = "// ---- lmsb: pasted from here ----\n", "// ---- lmsb: pasted up to here ----\n"


def _harness_part(name: str) -> str:
    """The code of `rewards/harness/<name>` that is pasted into each record's harness and checker:
    the lines after its `pasted from here` marker, up to its `pasted up to here` marker if it has one.
    Shipped as real source files so that a compiler can check them
    (`tests/test_code_rewards.py::test_harness_files_compile`)."""
    text = (importlib.resources.files("rewards") / "harness" / name).read_text(encoding="utf-8")
    part = text.split(_PASTE_FROM, 1)[1]
    return "\n" + part.split(_PASTE_TO, 1)[0]


def _match_paren(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`, skipping string and char literals."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def split_assert(body: str) -> tuple[str, str, str] | None:
    """`f(ARGS) == EXPECTED` or `f(ARGS).equals(EXPECTED)` -> (f, ARGS, EXPECTED); else None."""
    m = re.match(r"\s*([A-Za-z_]\w*)\s*\(", body)
    if not m:
        return None
    open_at = m.end() - 1
    close = _match_paren(body, open_at)
    if close < 0:
        return None
    args, rest = body[open_at + 1 : close], body[close + 1 :].strip()
    if rest.startswith("=="):
        expected = rest[2:].strip()
    elif rest.startswith(".equals(") and _match_paren(rest, len(".equals")) == len(rest) - 1:
        expected = rest[len(".equals(") : -1]
    else:
        return None
    return (m.group(1), args, expected) if expected else None


@dataclass
class Plan:
    """One MultiPL-E record, ready to build jobs from."""

    language: str
    record: str  # a readable id
    name: str  # the function under test
    checks: list[tuple[str, str]]  # (ARGS, EXPECTED) per supported assert
    candidate_prefix: str  # prompt (the candidate's source starts with it)
    candidate_suffix: str  # what closes the function (and class) after the completion
    harness: str  # harness source (C++ translation unit / Java class)
    checker: str  # checker source
    stub: str  # a candidate that compiles whatever the return type (to validate the harness)
    class_name: str = ""  # Java: the candidate's class
    dropped: int = 0  # asserts of another shape
    expected: list[Any] | None = field(default=None)  # filled by running the checker


def _asserts(tests: str, record: str) -> tuple[str, list[tuple[str, str]], int]:
    name, checks, dropped = None, [], 0
    for line in tests.split("\n"):
        m = _ASSERT_LINE.match(line)
        if not m:
            continue
        parts = split_assert(m.group("body"))
        if parts is None:
            dropped += 1
            continue
        if name is None:
            name = parts[0]
        if parts[0] != name:
            dropped += 1
            continue
        checks.append((parts[1], parts[2]))
    if not checks or name is None:
        raise MalformedRecordError(f"{record}: no assert of the form f(ARGS) == EXPECTED in its tests")
    return name, checks, dropped


# ----------------------------------------------------------------------------------- C++

CPP_SERIALIZER = _harness_part("lmsb_serializer.cpp")


def cpp_plan(record: Mapping[str, Any]) -> Plan:
    rid = f"HumanEval-X C++ record {record.get('name', '?')}"
    prompt, tests = record["prompt"], record["tests"]
    if not isinstance(prompt, str) or not isinstance(tests, str):
        raise MalformedRecordError(f"{rid}: prompt and tests must be strings")
    name, checks, dropped = _asserts(tests, rid)
    alias = re.search(r"auto\s+candidate\s*=\s*([A-Za-z_]\w*)\s*;", tests)
    func = alias.group(1) if alias and name == "candidate" else name
    sigs = list(re.finditer(r"^([^\n;{}#/]*\b" + re.escape(func) + r"\s*\([^{};]*\))\s*\{\s*$", prompt, re.MULTILINE))
    if not sigs:
        raise MalformedRecordError(f"{rid}: no definition of {func}(...) at the end of the prompt")
    sig = sigs[-1]
    header = prompt[: sig.start()]
    if re.search(r"^\s*union\s+\w+", header, re.MULTILINE):
        raise MalformedRecordError(
            f"{rid}: its values are C++ unions (MultiPL-E Union_* types), which carry no "
            "discriminant to serialise; not supported"
        )
    at_main = tests.find("int main")
    suffix = tests[:at_main] if at_main >= 0 else "\n}\n"
    calls = "".join(f"    lmsb_emit({k}, [&]() {{ return {func}({args}); }});\n" for k, (args, _) in enumerate(checks))
    expects = "".join(f"    lmsb_emit({k}, [&]() {{ return ({exp}); }});\n" for k, (_, exp) in enumerate(checks))
    harness = f"{header}\n{sig.group(1)};\n{CPP_SERIALIZER}\nint main() {{\n{calls}    return 0;\n}}\n"
    checker = f"{header}\n{CPP_SERIALIZER}\nint main() {{\n{expects}    return 0;\n}}\n"
    stub = prompt + "    throw 0;\n" + suffix
    return Plan("cpp", rid, func, checks, prompt, suffix, harness, checker, stub, dropped=dropped)


# ----------------------------------------------------------------------------------- Java

JAVA_SERIALIZER = _harness_part("LmsbSerializer.java")
_CLASS = re.compile(r"^\s*(?:public\s+)?(?:final\s+)?class\s+([A-Za-z_]\w*)", re.MULTILINE)


def java_plan(record: Mapping[str, Any]) -> Plan:
    rid = f"HumanEval-X Java record {record.get('name', '?')}"
    prompt, tests = record["prompt"], record["tests"]
    if not isinstance(prompt, str) or not isinstance(tests, str):
        raise MalformedRecordError(f"{rid}: prompt and tests must be strings")
    name, checks, dropped = _asserts(tests, rid)
    m = _CLASS.search(prompt)
    if m is None:
        raise MalformedRecordError(f"{rid}: the prompt declares no class")
    cls = m.group(1)
    imports = "".join(line + "\n" for line in prompt.split("\n") if line.startswith("import "))
    at_main = tests.find("public static void main")
    suffix = (tests[:at_main] if at_main >= 0 else "    }\n") + "\n}\n"
    calls = "".join(f"        lmsbEmit({k}, () -> {cls}.{name}({args}));\n" for k, (args, _) in enumerate(checks))
    expects = "".join(f"        lmsbEmit({k}, () -> ({exp}));\n" for k, (_, exp) in enumerate(checks))
    tail = "        Runtime.getRuntime().halt(0);\n    }\n}\n"
    harness = (
        f"{imports}final class LmsbHarness {{\n{JAVA_SERIALIZER}\n    public static void main(String[] args) {{\n"
        f"{calls}{tail}"
    )
    checker = (
        f"{imports}final class LmsbExpected {{\n{JAVA_SERIALIZER}\n    public static void main(String[] args) {{\n"
        f"{expects}{tail}"
    )
    stub = prompt + "        throw new RuntimeException();\n" + suffix
    return Plan("java", rid, name, checks, prompt, suffix, harness, checker, stub, class_name=cls, dropped=dropped)


# ----------------------------------------------------------------------------------- outputs


MAX_CHANNEL_CHARS = 1 << 16  # of a result channel, judged (honest output is a few KB): host work stays bounded


def parse_outputs(channel: str, n: int) -> list[Any]:
    """One entry per check from the result channel: the JSON value, or `MISSING` (no line, an
    exception, a malformed or contradictory line). Only the first `MAX_CHANNEL_CHARS` characters
    are read, and a channel of more than `n` lines (the harness writes one per check) gives every
    check `MISSING`: the program wrote to the channel itself. The host's work stays bounded
    whatever a program writes."""
    out: dict[int, Any] = {}
    bad: set[int] = set()
    lines = channel[:MAX_CHANNEL_CHARS].splitlines()
    if len(lines) > n:
        return [MISSING] * n
    for line in lines:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(msg, dict) or len(msg) != 2 or not isinstance(msg.get("k"), int):
            continue
        k = msg["k"]
        value = ("v", msg["v"]) if "v" in msg else ("e", None)
        if k in out and out[k] != value:
            bad.add(k)
        out.setdefault(k, value)
    return [out[k][1] if k in out and k not in bad and out[k][0] == "v" else MISSING for k in range(n)]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def same(expected: Any, actual: Any) -> bool:
    """JSON equality of two serialised values, numbers compared as numbers (as `==` does)."""
    if actual is MISSING or expected is MISSING:
        return False
    if expected == {"$f": "nan"}:
        return False  # nan equals nothing, as in C++ and Java
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return expected == actual
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(same(e, a) for e, a in zip(expected, actual))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same(expected[k], actual[k]) for k in expected)
        )
    return type(expected) is type(actual) and expected == actual


__all__ = [
    "Plan",
    "cpp_plan",
    "java_plan",
    "split_assert",
    "parse_outputs",
    "same",
    "MISSING",
    "CPP_SERIALIZER",
    "JAVA_SERIALIZER",
]

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

Asserts of another shape are dropped from the record's tests (`Plan.dropped`); a record with
none left is a `MalformedRecordError`. Imports: standard library and `rewards.errors`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import MalformedRecordError

_ASSERT_LINE = re.compile(r"^\s*assert\s*\((?P<body>.*)\)\s*;\s*$")


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

CPP_SERIALIZER = r"""
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#include <unistd.h>
namespace {
void lmsb_put(std::string& o, bool v);
void lmsb_put(std::string& o, char v);
void lmsb_put(std::string& o, const std::string& v);
void lmsb_put(std::string& o, const char* v);
void lmsb_put(std::string& o, std::nullopt_t);
template <class T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0> void lmsb_put(std::string& o, T v);
template <class T, typename std::enable_if<std::is_floating_point<T>::value, int>::type = 0> void lmsb_put(std::string& o, T v);
template <class T> void lmsb_put(std::string& o, const std::optional<T>& v);
template <class T> void lmsb_put(std::string& o, const std::vector<T>& v);
template <class A, class B> void lmsb_put(std::string& o, const std::pair<A, B>& v);
template <class... Ts> void lmsb_put(std::string& o, const std::tuple<Ts...>& v);
template <class K, class V> void lmsb_put(std::string& o, const std::map<K, V>& v);
template <class K, class V> void lmsb_put(std::string& o, const std::unordered_map<K, V>& v);
template <class T> void lmsb_put(std::string& o, const std::set<T>& v);

void lmsb_str(std::string& o, const std::string& s) {
    o += '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { o += '\\'; o += (char)c; }
        else if (c < 0x20 || c >= 0x7f) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", (unsigned)c); o += b; }
        else o += (char)c;
    }
    o += '"';
}
void lmsb_put(std::string& o, bool v) { o += v ? "true" : "false"; }
void lmsb_put(std::string& o, char v) { lmsb_str(o, std::string(1, v)); }
void lmsb_put(std::string& o, const std::string& v) { lmsb_str(o, v); }
void lmsb_put(std::string& o, const char* v) { lmsb_str(o, v ? std::string(v) : std::string()); }
void lmsb_put(std::string& o, std::nullopt_t) { o += "null"; }
template <class T, typename std::enable_if<std::is_integral<T>::value, int>::type>
void lmsb_put(std::string& o, T v) { o += std::to_string(v); }
template <class T, typename std::enable_if<std::is_floating_point<T>::value, int>::type>
void lmsb_put(std::string& o, T v) {
    double d = (double)v;
    if (std::isnan(d)) o += "{\"$f\":\"nan\"}";
    else if (std::isinf(d)) o += d > 0 ? "{\"$f\":\"inf\"}" : "{\"$f\":\"-inf\"}";
    else { char b[40]; std::snprintf(b, sizeof b, "%.17g", d); o += b; }
}
template <class T> void lmsb_put(std::string& o, const std::optional<T>& v) { if (v) lmsb_put(o, *v); else o += "null"; }
template <class T> void lmsb_put(std::string& o, const std::vector<T>& v) {
    o += '[';
    for (std::size_t i = 0; i < v.size(); ++i) { if (i) o += ','; lmsb_put(o, static_cast<T>(v[i])); }
    o += ']';
}
template <class A, class B> void lmsb_put(std::string& o, const std::pair<A, B>& v) {
    o += "{\"$t\":["; lmsb_put(o, v.first); o += ','; lmsb_put(o, v.second); o += "]}";
}
template <class Tuple, std::size_t... I> void lmsb_tuple(std::string& o, const Tuple& t, std::index_sequence<I...>) {
    ((o += (I == 0 ? "" : ","), lmsb_put(o, std::get<I>(t))), ...);
}
template <class... Ts> void lmsb_put(std::string& o, const std::tuple<Ts...>& v) {
    o += "{\"$t\":["; lmsb_tuple(o, v, std::index_sequence_for<Ts...>{}); o += "]}";
}
template <class It> void lmsb_entries(std::string& o, It b, It e) {
    std::vector<std::string> items;
    for (; b != e; ++b) { std::string s = "["; lmsb_put(s, b->first); s += ','; lmsb_put(s, b->second); s += ']'; items.push_back(s); }
    std::sort(items.begin(), items.end());
    o += "{\"$d\":[";
    for (std::size_t i = 0; i < items.size(); ++i) { if (i) o += ','; o += items[i]; }
    o += "]}";
}
template <class K, class V> void lmsb_put(std::string& o, const std::map<K, V>& v) { lmsb_entries(o, v.begin(), v.end()); }
template <class K, class V> void lmsb_put(std::string& o, const std::unordered_map<K, V>& v) { lmsb_entries(o, v.begin(), v.end()); }
template <class T> void lmsb_put(std::string& o, const std::set<T>& v) {
    o += "{\"$s\":[";
    bool first = true;
    for (const auto& x : v) { if (!first) o += ','; first = false; lmsb_put(o, x); }
    o += "]}";
}
void lmsb_line(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) { ssize_t n = ::write(3, s.data() + off, s.size() - off); if (n <= 0) return; off += (std::size_t)n; }
}
template <class F> void lmsb_emit(int k, F f) {
    std::string line;
    try {
        std::string v;
        lmsb_put(v, f());
        line = "{\"k\":" + std::to_string(k) + ",\"v\":" + v + "}\n";
    } catch (...) {
        line = "{\"k\":" + std::to_string(k) + ",\"e\":\"exception\"}\n";
    }
    lmsb_line(line);
}
}  // namespace
"""


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

JAVA_SERIALIZER = r"""
    private static java.io.OutputStream lmsbOut;
    private static void lmsbStr(StringBuilder o, String s) {
        o.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') { o.append('\\').append(c); }
            else if (c < 0x20 || c >= 0x7f) { o.append(String.format("\\u%04x", (int) c)); }
            else o.append(c);
        }
        o.append('"');
    }
    private static String lmsbOne(Object v) { StringBuilder s = new StringBuilder(); lmsbPut(s, v); return s.toString(); }
    private static void lmsbSorted(StringBuilder o, String tag, java.util.List<String> items) {
        java.util.Collections.sort(items);
        o.append("{\"").append(tag).append("\":[").append(String.join(",", items)).append("]}");
    }
    private static void lmsbPut(StringBuilder o, Object v) {
        if (v == null) { o.append("null"); }
        else if (v instanceof Boolean) { o.append(((Boolean) v) ? "true" : "false"); }
        else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte) { o.append(((Number) v).longValue()); }
        else if (v instanceof java.math.BigInteger) { o.append(v.toString()); }
        else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d)) o.append("{\"$f\":\"nan\"}");
            else if (Double.isInfinite(d)) o.append(d > 0 ? "{\"$f\":\"inf\"}" : "{\"$f\":\"-inf\"}");
            else o.append(Double.toString(d));
        }
        else if (v instanceof Character) { lmsbStr(o, String.valueOf((char) (Character) v)); }
        else if (v instanceof String) { lmsbStr(o, (String) v); }
        else if (v instanceof java.util.Optional) {
            java.util.Optional<?> p = (java.util.Optional<?>) v;
            o.append("{\"$opt\":[");
            if (p.isPresent()) lmsbPut(o, p.get());
            o.append("]}");
        }
        else if (v instanceof java.util.List) {
            o.append('[');
            boolean first = true;
            for (Object x : (java.util.List<?>) v) { if (!first) o.append(','); first = false; lmsbPut(o, x); }
            o.append(']');
        }
        else if (v instanceof org.javatuples.Tuple) {
            o.append("{\"$t\":[");
            boolean first = true;
            for (Object x : ((org.javatuples.Tuple) v).toList()) { if (!first) o.append(','); first = false; lmsbPut(o, x); }
            o.append("]}");
        }
        else if (v instanceof java.util.Map) {
            java.util.List<String> items = new java.util.ArrayList<>();
            for (java.util.Map.Entry<?, ?> e : ((java.util.Map<?, ?>) v).entrySet()) items.add("[" + lmsbOne(e.getKey()) + "," + lmsbOne(e.getValue()) + "]");
            lmsbSorted(o, "$d", items);
        }
        else if (v instanceof java.util.Set) {
            java.util.List<String> items = new java.util.ArrayList<>();
            for (Object x : (java.util.Set<?>) v) items.add(lmsbOne(x));
            lmsbSorted(o, "$s", items);
        }
        else if (v.getClass().isArray()) {
            o.append('[');
            int n = java.lang.reflect.Array.getLength(v);
            for (int i = 0; i < n; i++) { if (i > 0) o.append(','); lmsbPut(o, java.lang.reflect.Array.get(v, i)); }
            o.append(']');
        }
        else { o.append("{\"$o\":"); lmsbStr(o, v.getClass().getName()); o.append('}'); }
    }
    private static void lmsbEmit(int k, java.util.concurrent.Callable<Object> f) {
        String line;
        try { line = "{\"k\":" + k + ",\"v\":" + lmsbOne(f.call()) + "}\n"; }
        catch (Throwable t) { line = "{\"k\":" + k + ",\"e\":\"exception\"}\n"; }
        try {
            if (lmsbOut == null) lmsbOut = new java.io.FileOutputStream("/dev/fd/3");
            lmsbOut.write(line.getBytes(java.nio.charset.StandardCharsets.UTF_8));
            lmsbOut.flush();
        } catch (Throwable t) { }
    }
"""
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

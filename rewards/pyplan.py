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
Imports: standard library and `rewards.errors`.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.errors import MalformedRecordError

SEED = 20240601  # the `random` seed both host passes run under

# The encoder, as source: executed here (for arguments) and in the jail's harness (for results).
# Everything it uses is bound when it is built, before any candidate code runs; base-class
# methods (int.__int__, list.copy, dict.items...) read the real storage of a subclass instance.
ENCODER_SOURCE = r"""
def _lmsb_make_encoder(ref_of=None, max_depth=200):
    _type, _issubclass, _repr, _len = type, issubclass, repr, len
    _int, _float, _str, _list, _tuple, _dict = int, float, str, list, tuple, dict
    _set, _frozenset, _bytes, _bytearray, _bool, _ValueError = set, frozenset, bytes, bytearray, bool, ValueError
    _complex, _complex_real, _complex_imag = complex, complex.real.__get__, complex.imag.__get__
    _builtin_types = {t: t.__name__ for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex,
                                              type(None), object)}
    _int_v, _float_v, _str_v = int.__int__, float.__float__, str.__str__
    _list_copy, _tuple_iter, _dict_items = list.copy, tuple.__iter__, dict.items
    _set_iter, _fset_iter, _bytes_hex, _ba_hex = set.__iter__, frozenset.__iter__, bytes.hex, bytearray.hex
    _inf = float("inf")

    def enc(v, depth=0):
        if depth > max_depth:
            raise _ValueError("nested too deeply")
        t = _type(v)
        if v is None or t is _bool:
            return v
        if ref_of is not None:
            ref = ref_of(v)
            if ref is not None:
                return ref
        if _issubclass(t, _int):
            return _int_v(v)
        if _issubclass(t, _float):
            f = _float_v(v)
            return f if (f == f and f != _inf and f != -_inf) else {"$f": _repr(f)}
        if _issubclass(t, _str):
            return _str_v(v)
        d = depth + 1
        if _issubclass(t, _list):
            return [enc(x, d) for x in _list_copy(v)]
        if _issubclass(t, _tuple):
            return {"$t": [enc(x, d) for x in _tuple_iter(v)]}
        if _issubclass(t, _dict):
            return {"$d": [[enc(k, d), enc(x, d)] for k, x in _dict_items(v)]}
        if _issubclass(t, _frozenset):
            return {"$fs": [enc(x, d) for x in _fset_iter(v)]}
        if _issubclass(t, _set):
            return {"$s": [enc(x, d) for x in _set_iter(v)]}
        if _issubclass(t, _bytes):
            return {"$b": _bytes_hex(v)}
        if _issubclass(t, _bytearray):
            return {"$b": _ba_hex(v)}
        if _issubclass(t, _complex):
            return {"$c": [enc(_complex_real(v), d), enc(_complex_imag(v), d)]}
        if t is type and v in _builtin_types:
            return {"$type": _builtin_types[v]}
        return {"$o": "object"}

    return enc
"""

# The jail half: a sandbox prelude (compiled once per worker). `_lmsb_main(source, calls)`.
HARNESS = (
    ENCODER_SOURCE
    + r"""
def _lmsb_main(_src, _calls, _setup="", _fd=3):
    import json as _json
    import os as _os
    _write, _exit, _dumps = _os.write, _os._exit, _json.dumps
    _compile, _exec, _BaseException = compile, exec, BaseException
    _loads, _type, _isinstance, _dict, _list, _tuple = _json.loads, type, isinstance, dict, list, tuple
    _set, _frozenset, _bytes_fromhex, _float, _len = set, frozenset, bytes.fromhex, float, len
    _enc = _lmsb_make_encoder()
    _results = []
    _known = {e: e.__name__ for e in (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, AttributeError,
                                      RecursionError, OverflowError, NotImplementedError, ArithmeticError,
                                      LookupError, RuntimeError, AssertionError)}
    _types = {t.__name__: t for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex,
                                      type(None), object)}

    def emit(obj):
        try:
            _write(_fd, (_dumps(obj) + "\n").encode())
        except _BaseException:
            pass

    def dec(x):
        if _isinstance(x, _list):
            return [dec(i) for i in x]
        if _isinstance(x, _dict):
            (tag, v), = x.items()
            if tag == "$t":
                return _tuple(dec(i) for i in v)
            if tag == "$d":
                return {dec(k): dec(i) for k, i in v}
            if tag == "$s":
                return _set(dec(i) for i in v)
            if tag == "$fs":
                return _frozenset(dec(i) for i in v)
            if tag == "$b":
                return _bytes_fromhex(v)
            if tag == "$f":
                return _float(v)
            if tag == "$c":
                return complex(dec(v[0]), dec(v[1]))
            if tag == "$type":
                return _types[v]
            if tag == "$ref":
                return _results[v]
            if tag == "$global":
                return ns[v]
            raise ValueError(tag)
        return x

    try:
        code = _compile(_src, "<solution>", "exec")
    except _BaseException:
        emit({"compiled": False})
        _exit(0)
    emit({"compiled": True})
    calls = _loads(_calls)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        _exec(code, ns)
        if _setup:  # inputs built from the candidate's own classes (MBPP test_setup_code)
            _exec(_compile(_setup, "<setup>", "exec"), ns)
    except _BaseException:
        pass
    for k, (name, args) in enumerate(calls):
        _results.append(None)
        fn = ns.get(name)
        if fn is None:
            emit({"k": k, "e": "missing"})
            continue
        try:
            pos = [dec(a) for a in args[0]]
            kw = {key: dec(v) for key, v in args[1].items()}
            value = fn(*pos, **kw)
        except _BaseException as e:
            kind = "BaseException"
            try:  # the nearest builtin exception class, by identity (names can be faked)
                for cls in _type(e).__mro__:
                    if cls in _known:
                        kind = _known[cls]
                        break
            except _BaseException:
                pass
            emit({"k": k, "e": kind})
            continue
        _results[k] = value
        try:
            out = {"k": k, "v": _enc(value)}
            line = _dumps(out)
        except _BaseException:
            emit({"k": k, "e": "unencodable"})
            continue
        try:
            _write(_fd, (line + "\n").encode())
        except _BaseException:
            pass
    _exit(0)
"""
)

_ns: dict[str, Any] = {}
exec(ENCODER_SOURCE, _ns)  # noqa: S102 - our own source, above
make_encoder = _ns["_lmsb_make_encoder"]
_plain_encode = make_encoder()

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


_TYPES = {
    t.__name__: t
    for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex, type(None), object)
}


class CandidateError(Exception):
    """A candidate call raised something, or produced no usable output."""


class Opaque:
    """A value the jail could not serialise: equal only to itself."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<opaque {self.kind}>"


# Bounds on what judging one completion may cost the host. The jail's output is data a hostile
# program shaped, and the judge (inside the trainer) decodes it, hashes it and runs the record's
# test code on it; each bound is far above what honest solutions need (all of MBPP and HumanEval:
# at most 5.3 KB of channel, 641 values, one value per hash but for the -1/-2 pair).
MAX_CHANNEL_CHARS = 1 << 16  # of a result channel, judged; the rest is ignored (those calls fail)
MAX_VALUES = 1 << 13  # values decoded per completion, all calls together
MAX_DEPTH = 64  # nesting of one value
SMALL_HASHABLE = 32  # hashables of at most this many values are hashed on decoding and checked
MAX_LARGE_HASHABLES = 64  # larger hashables (tuples, frozensets) per completion
MAX_SAME_HASH = 8  # distinct values that share one hash, per completion


class DecodeBudget:
    """What decoding one completion's outputs may still cost: values left, and every small
    hashable value seen so far by its hash. Building a set or dict of many distinct values that
    share one hash (ints n + k·(2^61 − 1), crafted tuples or complex numbers) is quadratic, in the
    decoder or in test code such as ``set(result)``: such output is refused (`ValueError`)."""

    __slots__ = ("values", "large", "hashes")

    def __init__(self) -> None:
        self.values, self.large = MAX_VALUES, MAX_LARGE_HASHABLES
        self.hashes: dict[int, list[Any]] = {}

    def spend(self, n: int) -> None:
        self.values -= n
        if self.values < 0:
            raise ValueError(f"more than {MAX_VALUES} values in one completion's outputs")

    def seen(self, value: Any, size: int) -> None:
        """Count a hashable `value` of `size` values (itself included)."""
        if size > SMALL_HASHABLE:
            self.large -= 1
            if self.large < 0:
                raise ValueError(f"more than {MAX_LARGE_HASHABLES} large tuples or frozensets")
            return
        try:
            h = hash(value)
        except TypeError:  # a tuple holding a list: it cannot be hashed by test code either
            return
        same = self.hashes.get(h)
        if same is None:
            self.hashes[h] = [value]
        elif value not in same:  # small values: a few cheap comparisons
            same.append(value)
            if len(same) > MAX_SAME_HASH:
                raise ValueError(f"more than {MAX_SAME_HASH} distinct values share one hash")


def decode(x: Any, depth: int = 0, budget: DecodeBudget | None = None) -> Any:
    """Tagged JSON (from the jail) to plain Python values; raises ValueError on anything else, and
    on output past `budget` (one per completion; a fresh one if None)."""
    return _decode(x, depth, budget if budget is not None else DecodeBudget())[0]


_ATOMS = (bool, int, float, str)


def _decode(x: Any, depth: int, budget: DecodeBudget) -> tuple[Any, int]:
    """(value, number of values in it)."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    budget.spend(1)
    if x is None:
        return x, 1
    if isinstance(x, _ATOMS):
        budget.seen(x, 1)
        return x, 1
    if isinstance(x, list):
        items, size = _decode_all(x, depth, budget)
        return items, size
    if isinstance(x, dict) and len(x) == 1:
        ((tag, v),) = x.items()
        if tag in ("$t", "$s", "$fs") and isinstance(v, list):
            items, size = _decode_all(v, depth, budget)
            if tag == "$s":
                return set(items), size  # every element was checked on its way here
            out = tuple(items) if tag == "$t" else frozenset(items)
            budget.seen(out, size)
            return out, size
        if tag == "$d" and isinstance(v, list):
            pairs, size = [], 1
            for pair in v:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError("bad dict entry")
                (key, n), (item, m) = _decode(pair[0], depth + 1, budget), _decode(pair[1], depth + 1, budget)
                pairs.append((key, item))
                size += n + m
            return dict(pairs), size
        if tag == "$f" and v in ("nan", "inf", "-inf"):
            return float(v), 1
        if tag == "$b" and isinstance(v, str):
            out = bytes.fromhex(v)
            budget.seen(out, 1)
            return out, 1
        if tag == "$c" and isinstance(v, list) and len(v) == 2:
            (re_, _), (im, _) = _decode(v[0], depth + 1, budget), _decode(v[1], depth + 1, budget)
            if isinstance(re_, float) and isinstance(im, float):
                out = complex(re_, im)
                budget.seen(out, 1)
                return out, 3
        if tag == "$type" and v in _TYPES:
            return _TYPES[v], 1
        if tag == "$o":
            return Opaque(str(v)[:64]), 1
    raise ValueError("not a value")


def _decode_all(xs: list, depth: int, budget: DecodeBudget) -> tuple[list, int]:
    if len(xs) > budget.values:
        raise ValueError(f"more than {MAX_VALUES} values in one completion's outputs")
    items, size = [], 1
    for i in xs:
        item, n = _decode(i, depth + 1, budget)
        items.append(item)
        size += n
    return items, size


class _Unsupported(Exception):
    pass


class JailGlobal:
    """Stands, on the host, for a value the jail-side setup built (passed to calls by name)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Pending:
    """What a recorded candidate call returns while planning: absorbs any use."""

    __slots__ = ("ref",)

    def __init__(self, ref: int | None = None) -> None:
        self.ref = ref

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __float__(self) -> float:
        return 0.0

    def __int__(self) -> int:
        return 0

    def __index__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return id(self)

    def __contains__(self, item: Any) -> bool:
        return False

    def __str__(self) -> str:
        return ""

    def __getattr__(self, name: str) -> Any:
        return Pending()

    def __call__(self, *a: Any, **k: Any) -> Pending:
        return Pending()

    def __getitem__(self, key: Any) -> Pending:
        return Pending()


def _absorb(self: Any, *a: Any) -> Pending:
    return Pending()


for _name in (
    "add radd sub rsub mul rmul truediv rtruediv floordiv rfloordiv mod rmod pow rpow neg pos abs "
    "and rand or ror xor rxor lshift rlshift rshift rrshift invert round eq ne lt le gt ge"
).split():
    setattr(Pending, f"__{_name}__", _absorb)


@dataclass
class PyPlan:
    """One record's tests, split for the jail (`calls`) and the host (`units`)."""

    source_prefix: str  # prepended to the completion to make the candidate's program
    setup: str  # host-side setup code (prompt helpers, test module, test_setup_code)
    names: tuple[str, ...]  # the candidate functions the tests call
    units: list[str]  # test code units, run one by one on the host
    tests: list[int]  # indices of units that are tests (an assert and a candidate call)
    calls: list[tuple[int, str, Any]]  # (unit, name, encoded [args, kwargs]) sent to the jail
    dropped: list[int] = field(default_factory=list)  # test units with unsupported calls
    aliases: dict[str, str] = field(default_factory=dict)  # test name -> the candidate's name
    jail_setup: str = ""  # setup that builds inputs from the candidate's own classes (runs in the jail)
    jail_globals: tuple[str, ...] = ()  # the names it binds; the host passes them by name

    @property
    def channel_lines(self) -> int:
        """Result-channel lines an honest run writes: the compiled flag and one per call (the
        judge reads no more)."""
        return len(self.calls) + 1

    @property
    def jail_calls(self) -> str:
        return json.dumps([[self.aliases.get(name, name), args] for _, name, args in self.calls])


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Both host passes: the same `random` seed (restored after), the records' warnings quiet."""
    state = random.getstate()
    random.seed(SEED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        random.setstate(state)


class _Neutralise(ast.NodeTransformer):
    """`assert c, m` -> `_lmsb_probe(lambda: c)`: evaluate, ignore the outcome."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        call = ast.Call(
            ast.Name("_lmsb_probe", ast.Load()),
            [
                ast.Lambda(
                    ast.arguments(
                        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
                    ),
                    self.visit(node.test),
                )
            ],
            [],
        )
        return ast.copy_location(ast.Expr(call), node)


def _probe(fn: Any) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - planning only needs the calls, not the outcome
        pass


def _bound_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _parse(code: str, what: str, record: str) -> ast.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError) as e:
        raise MalformedRecordError(f"{record}: {what} does not parse: {e}") from None


def _exec_setup(setup: str, record: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__lmsb_tests__", "__builtins__": builtins}
    try:
        exec(compile(setup, f"<{record} setup>", "exec"), ns)  # noqa: S102 - the record's own code
    except Exception as e:  # noqa: BLE001
        raise MalformedRecordError(f"{record}: test setup code fails: {type(e).__name__}: {e}") from None
    return ns


def _encode_args(args: tuple, kwargs: Mapping[str, Any], ref_of: Any, strict_plain: bool = True) -> Any:
    enc = make_encoder(ref_of)

    def strict(v: Any) -> Any:
        out = enc(v)
        if strict_plain and _contains_opaque(out):
            raise _Unsupported("argument is not plain data")
        return out

    return [[strict(a) for a in args], {str(k): strict(v) for k, v in kwargs.items()}]


def _contains_opaque(x: Any) -> bool:
    if isinstance(x, list):
        return any(_contains_opaque(i) for i in x)
    if isinstance(x, dict):
        return "$o" in x or any(_contains_opaque(v) for v in x.values())
    return False


def build_plan(
    source_prefix: str,
    setup: str,
    units: Sequence[str],
    names: Sequence[str],
    record: str,
    aliases: Mapping[str, str] | None = None,
    jail_setup: str = "",
    jail_globals: Sequence[str] = (),
) -> PyPlan:
    """Run the record's tests with recorders (pass 1) and return the plan."""
    trees = [_parse(u, "a test", record) for u in units]
    _parse(setup, "the test setup code", record)
    has_assert = [any(isinstance(n, ast.Assert) for n in ast.walk(t)) for t in trees]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probes = [
            compile(ast.fix_missing_locations(_Neutralise().visit(t)), f"<{record} test>", "exec") for t in trees
        ]  # (rewrites the trees in place)
    calls: list[tuple[int, str, Any]] = []
    pending_refs: dict[int, int] = {}  # id(Pending) -> call index
    keep: list[Pending] = []
    unit = [0]

    def ref_of(v: Any) -> Any:
        if type(v) is Pending:
            if v.ref is None:
                raise _Unsupported("argument computed from a candidate result")
            return {"$ref": v.ref}
        if type(v) is JailGlobal:
            return {"$global": v.name}
        return None

    def recorder(name: str) -> Any:
        def record_call(*args: Any, **kwargs: Any) -> Pending:
            k = len(calls)
            try:
                enc = _encode_args(args, kwargs, ref_of)
            except (_Unsupported, ValueError, TypeError, RecursionError):
                enc = None
            calls.append((unit[0], name, enc))
            p = Pending(k)
            keep.append(p)
            pending_refs[id(p)] = k
            return p

        return record_call

    with _seeded():
        ns = _exec_setup(setup, record)
        ns["_lmsb_probe"] = _probe
        for name in jail_globals:
            ns[name] = JailGlobal(name)
        for name in names:
            ns[name] = recorder(name)
        for i, code in enumerate(probes):
            unit[0] = i
            try:
                exec(code, ns)  # noqa: S102
            except Exception:  # noqa: BLE001 - a unit stops here in the plan; judged the same way later
                pass
    units_with_calls = {u for u, _, _ in calls}
    tests = [i for i in range(len(units)) if has_assert[i] and i in units_with_calls]
    # Drop units with an unsupported call, and (to a fixed point) units whose calls refer to them.
    dropped = {u for u, _, enc in calls if enc is None}
    while True:
        removed = {k for k, (u, _, _) in enumerate(calls) if u in dropped}
        more = {u for u, _, enc in calls if u not in dropped and _refs(enc) & removed}
        if not more:
            break
        dropped |= more
    kept_index = {}
    kept: list[tuple[int, str, Any]] = []
    for k, (u, name, enc) in enumerate(calls):
        if u not in dropped:
            kept_index[k] = len(kept)
            kept.append((u, name, _renumber(enc, kept_index)))
    plan_tests = [i for i in tests if i not in dropped]
    if not plan_tests:
        raise MalformedRecordError(
            f"{record}: no supported test (asserts calling {', '.join(names) or 'nothing'} with plain-data arguments)"
        )
    return PyPlan(
        source_prefix,
        setup,
        tuple(names),
        list(units),
        plan_tests,
        kept,
        sorted(dropped & set(tests)),
        dict(aliases or {}),
        jail_setup,
        tuple(jail_globals),
    )


def _refs(enc: Any) -> set[int]:
    if isinstance(enc, list):
        return set().union(*(_refs(i) for i in enc)) if enc else set()
    if isinstance(enc, dict):
        if set(enc) == {"$ref"}:
            return {enc["$ref"]}
        return set().union(*(_refs(v) for v in enc.values())) if enc else set()
    return set()


def _renumber(enc: Any, index: Mapping[int, int]) -> Any:
    if isinstance(enc, list):
        return [_renumber(i, index) for i in enc]
    if isinstance(enc, dict):
        if set(enc) == {"$ref"}:
            return {"$ref": index[enc["$ref"]]}
        return {k: _renumber(v, index) for k, v in enc.items()}
    return enc


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
                actual = _encode_args(args, kwargs, _opaque_ref, strict_plain=False)
            except (_Unsupported, ValueError, TypeError, RecursionError):
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
    with _seeded():
        ns = _exec_setup(plan.setup, record)
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


# ----------------------------------------------------------------------------------- records


def mbpp_plan(record: Mapping[str, Any], challenge_tests: bool = False) -> PyPlan:
    """MBPP: each assert of `test_list` is one test; the candidate functions are the names the
    asserts call that neither the builtins nor `test_setup_code` define."""
    with warnings.catch_warnings():  # old records have invalid escapes in their strings
        warnings.simplefilter("ignore")
        return _mbpp_plan(record, challenge_tests)


def _mbpp_plan(record: Mapping[str, Any], challenge_tests: bool) -> PyPlan:
    rid = f"MBPP record {record.get('task_id', '?')}"
    tests = list(record["test_list"]) + (list(record.get("challenge_test_list") or []) if challenge_tests else [])
    if not tests or not all(isinstance(t, str) for t in tests):
        raise MalformedRecordError(f"{rid}: test_list must be a non-empty list of strings")
    setup = record.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise MalformedRecordError(f"{rid}: test_setup_code is not a string")
    reference = record.get("code")
    defined = set()
    if isinstance(reference, str):  # the reference solution's top-level names (`sum` may be one)
        try:
            defined = {
                n.name
                for n in ast.parse(reference).body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
        except (SyntaxError, ValueError):
            pass
    bound = (_bound_names(_parse(setup, "the test setup code", rid)) | set(dir(builtins))) - defined
    names: list[str] = []
    for t in tests:
        tree = _parse(t, "a test", rid)
        bound_here = _bound_names(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id not in bound
                and node.func.id not in bound_here
                and node.func.id not in names
            ):
                names.append(node.func.id)
    # Tests may use modules the reference solution imports (`sys.getsizeof`, MBPP 596).
    imports = ""
    if isinstance(reference, str):
        try:
            imports = "".join(
                ast.unparse(n) + "\n" for n in ast.parse(reference).body if isinstance(n, (ast.Import, ast.ImportFrom))
            )
        except (SyntaxError, ValueError):
            pass
    # A setup that builds inputs from the solution's own classes (MBPP 367, 927: `Node` trees)
    # runs in the jail after the candidate's code; the host passes what it binds by name.
    setup_tree = _parse(setup, "the test setup code", rid)
    uses = {n.id for n in ast.walk(setup_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if setup and uses & defined - _bound_names(setup_tree):
        jail_globals = sorted(_bound_names(setup_tree))
        return build_plan("", imports, tests, names, rid, jail_setup=setup, jail_globals=jail_globals)
    return build_plan("", imports + setup, tests, names, rid)


def humaneval_plan(record: Mapping[str, Any]) -> PyPlan:
    """HumanEval: program = prompt + completion; `candidate` is the entry point. Each statement
    of `check`'s body is a unit; those with an assert and a candidate call are the tests."""
    rid = f"HumanEval record {record.get('task_id', '?')}"
    prompt, test, entry = record["prompt"], record["test"], record["entry_point"]
    if not all(isinstance(x, str) for x in (prompt, test, entry)):
        raise MalformedRecordError(f"{rid}: prompt, test and entry_point must be strings")
    tree = _parse(test, "the test code", rid)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise MalformedRecordError(f"{rid}: the test code defines no check(candidate)")
    module = ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[])
    _parse(prompt, "the prompt", rid)
    setup = prompt + "\n" + ast.unparse(module) + "\n"
    units = [ast.unparse(stmt) for stmt in check.body]
    # Tests sometimes call the entry point by name too (HumanEval/33): that is the candidate as well.
    return build_plan(prompt, setup, units, ("candidate", entry), rid, {"candidate": entry})


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
]

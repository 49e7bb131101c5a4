"""Pass 1, on the host: run a record's test code with recorders to plan the jail's calls.

Every assert is neutralised to "evaluate the condition, ignore the outcome" (`_Neutralise`), and
each candidate function is replaced by a recorder whose calls return a `Pending` placeholder that
absorbs whatever the test does with it. The result is a `PyPlan`: the candidate calls with their
arguments as plain data (an earlier call's result passed back in becomes a ``$ref``; a value the
jail-side setup builds, a ``$global``), and the test units the judge runs later. Units whose
calls cannot be planned are dropped (`PyPlan.dropped`). Also here: the helpers both host passes
share (`seeded`, `exec_setup`, `encode_args`, `JailGlobal`).
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
from rewards.pyplan.values import make_encoder

SEED = 20240601  # the `random` seed both host passes run under


class Unsupported(Exception):
    """A candidate-call argument that cannot be sent to the jail as plain data."""


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
def seeded() -> Iterator[None]:
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


def bound_names(tree: ast.AST) -> set[str]:
    """The names `tree` binds: assignments, definitions and imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def parse_code(code: str, what: str, record: str) -> ast.Module:
    """`ast.parse`, or a `MalformedRecordError` naming the record and `what` did not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError) as e:
        raise MalformedRecordError(f"{record}: {what} does not parse: {e}") from None


def exec_setup(setup: str, record: str) -> dict[str, Any]:
    """A fresh namespace for the record's test code, with its setup code run in it."""
    ns: dict[str, Any] = {"__name__": "__lmsb_tests__", "__builtins__": builtins}
    try:
        exec(compile(setup, f"<{record} setup>", "exec"), ns)  # noqa: S102 - the record's own code
    except Exception as e:  # noqa: BLE001
        raise MalformedRecordError(f"{record}: test setup code fails: {type(e).__name__}: {e}") from None
    return ns


def encode_args(args: tuple, kwargs: Mapping[str, Any], ref_of: Any, strict_plain: bool = True) -> Any:
    """A call's arguments as ``[positional, keyword]`` tagged JSON; `Unsupported` if one is not
    plain data (unless not `strict_plain`)."""
    enc = make_encoder(ref_of)

    def strict(v: Any) -> Any:
        out = enc(v)
        if strict_plain and _contains_opaque(out):
            raise Unsupported("argument is not plain data")
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
    trees = [parse_code(u, "a test", record) for u in units]
    parse_code(setup, "the test setup code", record)
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
                raise Unsupported("argument computed from a candidate result")
            return {"$ref": v.ref}
        if type(v) is JailGlobal:
            return {"$global": v.name}
        return None

    def recorder(name: str) -> Any:
        def record_call(*args: Any, **kwargs: Any) -> Pending:
            k = len(calls)
            try:
                enc = encode_args(args, kwargs, ref_of)
            except (Unsupported, ValueError, TypeError, RecursionError):
                enc = None
            calls.append((unit[0], name, enc))
            p = Pending(k)
            keep.append(p)
            pending_refs[id(p)] = k
            return p

        return record_call

    with seeded():
        ns = exec_setup(setup, record)
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

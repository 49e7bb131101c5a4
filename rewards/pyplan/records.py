"""The record formats: MBPP and HumanEval records made into a `PyPlan`.

MBPP: each assert of `test_list` is a test (after `test_setup_code` and the reference solution's
imports); HumanEval: each statement of `check` that asserts something about a candidate call.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from collections.abc import Mapping
from typing import Any

from rewards.errors import MalformedRecordError
from rewards.pyplan.planning import PyPlan, bound_names, build_plan, parse_code


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
    bound = (bound_names(parse_code(setup, "the test setup code", rid)) | set(dir(builtins))) - defined
    names: list[str] = []
    for t in tests:
        tree = parse_code(t, "a test", rid)
        bound_here = bound_names(tree)
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
    setup_tree = parse_code(setup, "the test setup code", rid)
    uses = {n.id for n in ast.walk(setup_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if setup and uses & defined - bound_names(setup_tree):
        jail_globals = sorted(bound_names(setup_tree))
        return build_plan("", imports, tests, names, rid, jail_setup=setup, jail_globals=jail_globals)
    return build_plan("", imports + setup, tests, names, rid)


def humaneval_plan(record: Mapping[str, Any]) -> PyPlan:
    """HumanEval: program = prompt + completion; `candidate` is the entry point. Each statement
    of `check`'s body is a unit; those with an assert and a candidate call are the tests."""
    rid = f"HumanEval record {record.get('task_id', '?')}"
    prompt, test, entry = record["prompt"], record["test"], record["entry_point"]
    if not all(isinstance(x, str) for x in (prompt, test, entry)):
        raise MalformedRecordError(f"{rid}: prompt, test and entry_point must be strings")
    tree = parse_code(test, "the test code", rid)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise MalformedRecordError(f"{rid}: the test code defines no check(candidate)")
    module = ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[])
    parse_code(prompt, "the prompt", rid)
    setup = prompt + "\n" + ast.unparse(module) + "\n"
    units = [ast.unparse(stmt) for stmt in check.body]
    # Tests sometimes call the entry point by name too (HumanEval/33): that is the candidate as well.
    return build_plan(prompt, setup, units, ("candidate", entry), rid, {"candidate": entry})

"""Degenerate bodies: completions whose function body is a single ``return`` of a constant.

A body is **degenerate** when, comments and blank lines aside, it is exactly one statement,
``return E`` (``return E;`` in C++ and Java), and ``E`` either

* mentions none of the function's parameters: a number, ``true``/``false``/``True``/``False``,
  ``null``/``nullptr``/``None``, a character or string literal, an empty container (``{}``,
  ``""``, ``std::vector<long>()``, ``new ArrayList<>()``, ``[]``), any expression of those, or a
  call that takes none of the arguments (``Math.PI``, ``List.of()``); or
* is one parameter returned unchanged (``return s;``, ``return (s);``, ``return xs``).

Per language, what "the body" is:

* **C++, Java** (HumanEval-X, MultiPL-E): the completion continues the prompt after the
  signature's ``{``; the body is the completion (code fences stripped, cut at the record's stop
  tokens) up to the brace that closes the function. Parameters come from the prompt's last
  signature (the last identifier of each comma-separated parameter).
* **Python, HumanEval**: the prompt (signature and docstring) + the completion, parsed with
  ``ast``; the body is the statements of the record's ``entry_point`` function, its docstring
  aside.
* **Python, MBPP**: the completion (code fences stripped) holds the whole function; parsed with
  ``ast``, the function is the first one the record's tests call (else the first ``def``).

A completion that does not parse (Python) or has no body is not degenerate: the compile rate
already counts it. Imports: standard library only.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

LANGUAGES = ("python", "cpp", "java")
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+#.-]*[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)
_IDENT = re.compile(r"[A-Za-z_]\w*")
_LITERALS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)", re.DOTALL)
_OPEN, _CLOSE = "([{<", ")]}>"
# Top-level code after a HumanEval function (the env's stop strings, `lm_envs.tasks.code`).
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def _strip_fences(text: str) -> str:
    match = _FENCE.search(text) if "```" in text else None
    return match.group(1) if match else text.replace("```", "")


# -- C++ and Java ----------------------------------------------------------------------------------------
def _blank_literals_and_comments(code: str) -> str:
    """Comments removed, string and char literals replaced by ``""`` (no brace or ``;`` inside)."""
    out, i = [], 0
    while i < len(code):
        comment = _COMMENTS.match(code, i)
        literal = _LITERALS.match(code, i)
        if comment:
            out.append(" ")
            i = comment.end()
        elif literal:
            out.append('""')
            i = literal.end()
        else:
            out.append(code[i])
            i += 1
    return "".join(out)


def body_end(code: str) -> int:
    """Index of the ``}`` that closes an already-open C++/Java function body in ``code`` (braces in
    comments and literals do not count); ``len(code)`` when it never closes."""
    depth, i = 0, 0
    while i < len(code):
        skip = _COMMENTS.match(code, i) or _LITERALS.match(code, i)
        if skip:
            i = skip.end()
            continue
        depth += code[i] == "{"
        depth -= code[i] == "}"
        if depth < 0:
            return i
        i += 1
    return len(code)


def _brace_body(code: str) -> str:
    """The text up to the ``}`` that closes the already-open function body."""
    depth = 0
    for i, char in enumerate(code):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return code[:i]
    return code


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def c_family_parameter_list(prompt: str) -> list[str]:
    """Parameter names, in order, of the last signature in C++/Java code (which ends with ``... ) {``)."""
    code = _blank_literals_and_comments(prompt)
    close = code.rfind(")")
    if close < 0:
        return []
    depth = 0
    for start in range(close, -1, -1):
        depth += code[start] == ")"
        depth -= code[start] == "("
        if depth == 0:
            break
    names = []
    for param in _split_top_level(code[start + 1 : close]):
        idents = _IDENT.findall(param.split("=")[0])
        if idents:
            names.append(idents[-1])
    return names


def c_family_parameters(prompt: str) -> set[str]:
    """Parameter names of the last signature in a C++/Java prompt, as a set."""
    return set(c_family_parameter_list(prompt))


def c_family_body(completion: str, stop_tokens: Sequence[str] = ()) -> str:
    """The function body a C++/Java completion writes, comments and literals blanked."""
    code = _strip_fences(completion)
    cut = min((i for i in (code.find(s) for s in stop_tokens if s) if i >= 0), default=len(code))
    return _brace_body(_blank_literals_and_comments(code[:cut]))


def c_family_degenerate(completion: str, prompt: str, stop_tokens: Sequence[str] = ()) -> bool:
    """One ``return E;`` whose ``E`` names no parameter, or is a parameter unchanged (module docstring)."""
    body = c_family_body(completion, stop_tokens).strip()
    match = re.fullmatch(r"return\b([^;]*);", body, re.DOTALL)
    if match is None:
        return False
    value = match.group(1).strip()
    params = c_family_parameters(prompt)
    bare = value.strip("() \t\n")
    return bare in params or not (set(_IDENT.findall(value)) & params)


# -- Python ----------------------------------------------------------------------------------------------
def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return set(names)


def python_function_degenerate(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """One ``return E`` (leading docstrings aside) whose ``E`` names no parameter, or is one unchanged."""
    body = list(fn.body)
    while body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if not isinstance(body[0].value.value, str):
            break
        body = body[1:]  # docstrings (the prompt's, and any the completion adds)
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return False
    value, params = body[0].value, _parameters(fn)
    if value is None:
        return True
    if isinstance(value, ast.Name) and value.id in params:
        return True
    return not any(isinstance(node, ast.Name) and node.id in params for node in ast.walk(value))


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _parse(code: str) -> ast.AST | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def python_degenerate(completion: str, reference: Mapping[str, Any] | None) -> bool:
    """HumanEval (the reference has ``prompt`` and ``entry_point``) or MBPP (a whole function)."""
    reference = reference if isinstance(reference, Mapping) else {}
    if "entry_point" in reference and "prompt" in reference:
        cut = min((i for i in (completion.find(s) for s in HUMANEVAL_STOPS) if i >= 0), default=len(completion))
        tree = _parse(reference["prompt"] + completion[:cut])
        target = reference["entry_point"]
    else:
        tree = _parse(_strip_fences(completion))
        tests = " ".join(reference.get("test_list") or [])
        target = None
        if tree is not None:
            called = set(re.findall(r"(\w+)\s*\(", tests))
            target = next((f.name for f in _functions(tree) if f.name in called), None)
    if tree is None:
        return False
    functions = _functions(tree)
    fn = next((f for f in functions if f.name == target), functions[0] if functions else None)
    return fn is not None and python_function_degenerate(fn)


# -- per language ---------------------------------------------------------------------------------------
def is_degenerate(language: str, completion: str, reference: Any) -> bool:
    """Whether ``completion`` (for the record ``reference``) has a degenerate body in ``language``."""
    if language == "python":
        return python_degenerate(completion, reference)
    if language in ("cpp", "java"):
        reference = reference if isinstance(reference, Mapping) else {}
        return c_family_degenerate(completion, reference.get("prompt", ""), reference.get("stop_tokens") or ())
    raise ValueError(f"no degenerate-body rule for language {language!r}; languages: {LANGUAGES}")


def degenerate_rate(language: str, completions: Sequence[str], references: Sequence[Any]) -> float:
    """Fraction of ``completions`` with a degenerate body (0 for an empty batch)."""
    flags = [is_degenerate(language, c, r) for c, r in zip(completions, references)]
    return sum(flags) / len(flags) if flags else 0.0

"""A griffe extension for the API reference: split ``:param a, b: text`` into one field per name.

Several docstrings document parameters that share a meaning on one line (``:param log_samples,
tensorboard_log, verbose: as in PPO.``). Sphinx's field syntax takes one name per field, so
griffe would drop those lines; this rewrites each into ``:param a: text`` and ``:param b: text``
(continuation lines copied to each) before griffe parses the docstring. Loaded by mkdocs.yml;
the source docstrings are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

FIELD = re.compile(r"^(?P<indent>\s*):param (?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+):(?P<text>.*)$")
OPEN_NAMES = re.compile(r"^\s*:param [A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*,\s*$")


def split_fields(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        while OPEN_NAMES.match(line) and i + 1 < len(lines):  # names continued on the next line
            i += 1
            line = line.rstrip() + " " + lines[i].strip()
        match = FIELD.match(line)
        if not match:
            out.append(line)
            i += 1
            continue
        indent = match.group("indent")
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            body.append(lines[i])
            i += 1
        for name in (n.strip() for n in match.group("names").split(",")):
            out.append(f"{indent}:param {name}:{match.group('text')}")
            out.extend(body)
    return "\n".join(out)


class MultiParams(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":param" in obj.docstring.value:
            obj.docstring.value = split_fields(obj.docstring.value)

"""Values crossing the jail boundary: plain Python values to tagged JSON and back, bounded.

`make_encoder` (from `encoder.py`, which the jail runs too) writes tagged JSON; `decode` reads
what the jail wrote back, charging one `DecodeBudget` per completion so that hostile output
(too many values, too deep, many distinct values sharing one hash) is refused with `ValueError`
instead of costing the host. A value the jail could not serialise arrives as an `Opaque`.
"""

from __future__ import annotations

from typing import Any

from rewards.pyplan.encoder import _lmsb_make_encoder

make_encoder = _lmsb_make_encoder

_TYPES = {
    t.__name__: t
    for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex, type(None), object)
}


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

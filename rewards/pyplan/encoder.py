"""The value encoder, shared by both sides of the jail: plain Python values to tagged JSON.

The host imports it to encode a candidate call's arguments (`rewards.pyplan.values.make_encoder`);
the jail runs this file's text as the first part of its prelude (`rewards.pyplan.jail.HARNESS`)
to encode the candidate's return values. So it is self-contained: no imports, and one function.
Everything it uses is bound when the encoder is built, before any candidate code runs; base-class
methods (int.__int__, list.copy, dict.items...) read the real storage of a subclass instance.
"""


def _lmsb_make_encoder(ref_of=None, max_depth=200):
    _type, _issubclass, _repr, _len = type, issubclass, repr, len
    _int, _float, _str, _list, _tuple, _dict = int, float, str, list, tuple, dict
    _set, _frozenset, _bytes, _bytearray, _bool, _ValueError = set, frozenset, bytes, bytearray, bool, ValueError
    _complex, _complex_real, _complex_imag = complex, complex.real.__get__, complex.imag.__get__
    _builtin_types = {
        t: t.__name__
        for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex, type(None), object)
    }
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

"""The jail half of a Python test record: `_lmsb_main(source, calls, setup)`, run in the sandbox.

Not imported by the host: its text follows `encoder.py`'s in the sandbox prelude
(`rewards.pyplan.jail.HARNESS`, compiled once per worker), so `_lmsb_make_encoder` is that file's.
It compiles and runs the candidate's source, makes the planned calls in order and writes one JSON
line per call to the result channel (fd 3): the encoded return value, or the name of the nearest
builtin exception the call raised. It must run under the jail's interpreter (the system's
/usr/bin/python3) with nothing but the standard library.
"""


def _lmsb_main(_src, _calls, _setup="", _fd=3):
    import json as _json
    import os as _os

    _write, _exit, _dumps = _os.write, _os._exit, _json.dumps
    _compile, _exec, _BaseException = compile, exec, BaseException
    _loads, _type, _isinstance, _dict, _list, _tuple = _json.loads, type, isinstance, dict, list, tuple
    _set, _frozenset, _bytes_fromhex, _float, _len = set, frozenset, bytes.fromhex, float, len
    _enc = _lmsb_make_encoder()  # noqa: F821 - defined by encoder.py, which precedes this file
    _results = []
    _known = {
        e: e.__name__
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
    _types = {
        t.__name__: t
        for t in (int, float, str, list, tuple, dict, set, frozenset, bytes, bool, complex, type(None), object)
    }

    def emit(obj):
        try:
            _write(_fd, (_dumps(obj) + "\n").encode())
        except _BaseException:
            pass

    def dec(x):
        if _isinstance(x, _list):
            return [dec(i) for i in x]
        if _isinstance(x, _dict):
            ((tag, v),) = x.items()
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

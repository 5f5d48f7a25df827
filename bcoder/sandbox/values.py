"""Plain-data values: what crosses between the judge process and the program's process.

A value crosses as JSON built from the builtin types only: None, bool, int, float, str
as themselves, and tagged lists for the rest:

    ["int", hex]                       an int of 10,000 bits or more
    ["complex", real, imag]
    ["bytes" | "bytearray", latin-1 text]
    ["list" | "tuple" | "set" | "frozenset", [items]]
    ["dict", [[key, value], ...]]
    ["object", type name, handle]      a program object that is not plain data, by reference
    ["ref", handle]                    that object, passed back into the program
    ["instance", class name, [[attribute, value], ...]]   a judge object of a class the
                                       problem's own code defines (MBPP's tree nodes), by value
    ["builtin", name]                  a builtin type or function (MBPP passes `int`, `str`)

`encode` reads a value through the builtin base types only (never a method the value's
class could override), so a list subclass crosses as its real items and an object whose
`__eq__` always returns True crosses as a reference that equals nothing. Each side passes
`other`, which decides what a non-plain object becomes, and `decode` passes the other
tags to `tagged`. Standard library only: this module runs in the sandbox worker.
"""

MAX_NODES = 200_000          # objects one encoded value may contain
MAX_DEPTH = 100
BIG_INT_BITS = 10_000        # larger ints cross as hex (decimal conversion is quadratic)
PLAIN_TAGS = ("int", "complex", "bytes", "bytearray", "list", "tuple", "set", "frozenset", "dict")
REFERENCE_TAGS = ("object", "ref", "instance", "builtin")

# Bound at import: a program may rebind the builtins in its process, not these names.
_type, _isinstance, _len, _list = type, isinstance, len, list


class NotPlainData(ValueError):
    """A value that cannot cross: too large, too deep, or an object `other` refuses."""


def encode(value, other):
    """JSON-able plain data for `value`; `other(v)` encodes each object that is not plain data."""
    budget = [MAX_NODES]

    def enc(v, depth):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise NotPlainData("value too large or too deeply nested to cross")
        t = _type(v)
        if v is None or t is bool or t is str or t is float:
            return v
        if t is int:
            return v if v.bit_length() < BIG_INT_BITS else ["int", hex(v)]
        if _isinstance(v, bool):
            return bool(int.__int__(v))
        if _isinstance(v, int):
            return enc(int.__int__(v), depth)
        if _isinstance(v, float):
            return float.__float__(v)
        if _isinstance(v, str):
            return str.__str__(v)
        if _isinstance(v, complex):
            return ["complex", complex.real.__get__(v), complex.imag.__get__(v)]
        if _isinstance(v, (bytes, bytearray)):
            return ["bytearray" if _isinstance(v, bytearray) else "bytes",
                    bytes(memoryview(v)).decode("latin-1")]
        if _isinstance(v, dict):
            return ["dict", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in dict.items(v)]]
        for base in (list, tuple, set, frozenset):
            if _isinstance(v, base):
                return [base.__name__, [enc(x, depth + 1) for x in base.__iter__(v)]]
        return other(v, lambda x: enc(x, depth + 1))

    return enc(value, 0)


def decode(data, tagged):
    """The builtin objects `data` encodes; `tagged(tag, fields, decode)` builds the references."""
    def dec(d):
        if not _isinstance(d, _list):
            if d is None or _type(d) in (bool, int, float, str):
                return d
            raise NotPlainData(f"not plain data: {_type(d).__name__}")
        if not d or not _isinstance(d[0], str):
            raise NotPlainData("a tagged value needs a tag")
        tag, fields = d[0], d[1:]
        if tag in REFERENCE_TAGS:
            return tagged(tag, fields, dec)
        if tag not in PLAIN_TAGS or _len(fields) != (2 if tag == "complex" else 1):
            raise NotPlainData(f"unknown or malformed tag {tag!r}")
        if tag == "int":
            return int(fields[0], 16)
        if tag == "complex":
            return complex(float(fields[0]), float(fields[1]))
        if tag in ("bytes", "bytearray"):
            return (bytes if tag == "bytes" else bytearray)(str(fields[0]).encode("latin-1"))
        if tag == "dict":
            return {dec(k): dec(v) for k, v in fields[0]}
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](dec(x) for x in fields[0])

    try:
        return dec(data)
    except (TypeError, ValueError, RecursionError) as error:   # unhashable keys, bad hex, too deep
        raise NotPlainData(f"malformed value: {error}") from None

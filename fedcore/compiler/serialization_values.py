"""JSON encodings of fedcore types (with their Python containers) and of literal values.

Part of the data-only file format of ``fedcore.compiler.serialization``.
"""

from __future__ import annotations

import base64
import collections
import sys
from typing import Any, Dict, Optional

import attrs
import numpy as np

from fedcore.structure import Struct
from fedcore.types import FederatedType, FunctionType, SequenceType, StructType, Type, parse


class SerializationError(ValueError):
    """A computation cannot be serialized, or bytes are not a valid serialized computation."""


# --------------------------------------------------------------------------
# Types and their containers.

_BUILTIN_CONTAINERS = {"list": list, "tuple": tuple, "dict": dict, "OrderedDict": collections.OrderedDict, "Struct": Struct}
_BUILTIN_NAMES = {v: k for k, v in _BUILTIN_CONTAINERS.items()}


def enc_container(c: Optional[type]) -> Any:
    if c is None:
        return None
    if c in _BUILTIN_NAMES:
        return _BUILTIN_NAMES[c]
    return {"module": c.__module__, "qualname": c.__qualname__}


def dec_container(data: Any) -> Optional[type]:
    if data is None:
        return None
    if isinstance(data, str):
        if data not in _BUILTIN_CONTAINERS:
            raise SerializationError(f"unknown container {data!r}")
        return _BUILTIN_CONTAINERS[data]
    # A class: looked up among modules already imported, never imported; only attrs
    # classes and namedtuples (data records) are accepted, to rebuild results.
    module = sys.modules.get(str(data.get("module")))
    obj: Any = module
    for part in str(data.get("qualname", "")).split("."):
        if obj is None or part.startswith("<"):
            return None
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and (attrs.has(obj) or (issubclass(obj, tuple) and hasattr(obj, "_fields"))):
        return obj
    return None  # unknown here: the struct comes back as a fedcore.Struct


def _containers(t: Optional[Type]) -> Any:
    """A JSON tree of the containers in ``t``; None where there are none."""
    match t:
        case StructType():
            kids = [_containers(e) for e in t]
            c = enc_container(t.container)
            if c is None and all(k is None for k in kids):
                return None
            return {"c": c, "e": kids}
        case FederatedType(member=m):
            return _containers(m)
        case SequenceType(element=e):
            return _containers(e)
        case FunctionType(parameter=p, result=r):
            a, b = _containers(p), _containers(r)
            return None if a is None and b is None else {"p": a, "r": b}
    return None


def _with_containers(t: Optional[Type], tree: Any) -> Optional[Type]:
    if tree is None or t is None:
        return t
    match t:
        case StructType():
            kids = tree["e"]
            if len(kids) != len(t):
                raise SerializationError(f"containers do not match type {t}")
            elements = [(n, _with_containers(e, k)) for (n, e), k in zip(t.elements, kids)]
            return StructType(elements, container=dec_container(tree["c"]))
        case FederatedType(member=m):
            return attrs.evolve(t, member=_with_containers(m, tree))
        case SequenceType(element=e):
            return attrs.evolve(t, element=_with_containers(e, tree))
        case FunctionType(parameter=p, result=r):
            return FunctionType(_with_containers(p, tree["p"]), _with_containers(r, tree["r"]))
    return t


def enc_type(t: Optional[Type]) -> Any:
    if t is None:
        return None
    c = _containers(t)
    return {"t": str(t)} if c is None else {"t": str(t), "c": c}


def dec_type(data: Any) -> Optional[Type]:
    if data is None:
        return None
    return _with_containers(parse(data["t"]), data.get("c"))


# --------------------------------------------------------------------------
# Literals.


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def enc_literal_value(value: Any) -> Any:
    if isinstance(value, (bytes, str)):
        return {"kind": "bytes" if isinstance(value, bytes) else "str", "data": _b64(value.encode() if isinstance(value, str) else value)}
    kind = "ndarray" if isinstance(value, np.ndarray) else "generic" if isinstance(value, np.generic) else type(value).__name__
    if kind not in ("ndarray", "generic", "int", "float", "bool", "complex"):
        raise SerializationError(f"cannot serialize a literal of Python type {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype.kind in "OSU":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1).tolist()]
        return {"kind": kind, "strings": [_b64(x) for x in items], "shape": list(arr.shape)}
    return {"kind": kind, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": _b64(arr.tobytes())}


def dec_literal_value(data: Dict[str, Any]) -> Any:
    kind = data["kind"]
    if kind in ("bytes", "str"):
        raw = _unb64(data["data"])
        return raw if kind == "bytes" else raw.decode()
    shape = tuple(int(d) for d in data["shape"])
    if "strings" in data:
        arr = np.array([_unb64(s) for s in data["strings"]], dtype=object).reshape(shape)
    else:
        dtype = np.dtype(data["dtype"])
        if dtype.kind not in "biufc":
            raise SerializationError(f"unsupported literal dtype {data['dtype']!r}")
        arr = np.frombuffer(_unb64(data["data"]), dtype=dtype).reshape(shape).copy()
    if kind == "ndarray":
        return arr
    if kind == "generic":
        return arr[()]
    return {"int": int, "float": float, "bool": bool, "complex": complex}[kind](arr[()])

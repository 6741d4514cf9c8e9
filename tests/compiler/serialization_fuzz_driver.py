"""Loads and calls every ``*.fedcore`` file of a directory, one JSON line per file (see test_serialization_fuzz).

Run as ``python -m tests.compiler.serialization_fuzz_driver DIR``.  Before each file it
prints ``{"start": NAME}``, so that if the process dies the parent knows which file
killed it.  Outcomes: ``refused`` (a SerializationError on load), ``ran`` or
``call-refused`` (it loaded; calling it returned, or raised one of the errors a call
may raise), and ``unexpected`` (any other exception: a failure).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np


def sample(t: Any) -> Any:
    """A value of type ``t`` to call a loaded computation with (raises LookupError where there is none)."""
    from fedcore.types import FederatedType, SequenceType, StructType, TensorType

    if isinstance(t, TensorType):
        shape = [2 if d is None else d for d in (t.shape or ())]
        if t.shape is None or int(np.prod(shape, dtype=np.int64)) > 1000:
            raise LookupError(t)
        if t.dtype == "string":
            return np.full(shape, b"s", dtype=object) if shape else b"s"
        return np.ones(shape, dtype=t.np_dtype) if shape else t.np_dtype.type(1)
    if isinstance(t, StructType):
        return [sample(e) for e in t]
    if isinstance(t, FederatedType):
        member = sample(t.member)
        return member if t.all_equal else [member, member]
    if isinstance(t, SequenceType):
        return [sample(t.element), sample(t.element)]
    raise LookupError(t)


def run_one(path: str) -> dict:
    import tensorflow as tf

    import fedcore
    from fedcore.compiler.serialization import SerializationError

    with open(path, "rb") as f:
        data = f.read()
    try:
        comp = fedcore.deserialize(data)
    except SerializationError as e:
        return {"outcome": "refused", "error": str(e)[:200]}
    except BaseException as e:  # noqa: BLE001 -- anything else escaping is what the fuzz looks for
        return {"outcome": "unexpected", "where": "load", "error": f"{type(e).__name__}: {e}"[:500]}
    if not isinstance(comp, fedcore.Computation):
        return {"outcome": "ran", "what": type(comp).__name__}
    parameter = comp.type_signature.parameter
    try:
        args = [] if parameter is None else [sample(parameter)]
    except LookupError:
        return {"outcome": "ran", "what": "not called"}
    names = comp.parameter_names
    if names and isinstance(args[0], list) and len(args[0]) == len(names):
        args = args[0]
    try:
        comp(*args)
    except (SerializationError, tf.errors.OpError, TypeError, ValueError) as e:
        return {"outcome": "call-refused", "error": f"{type(e).__name__}: {e}"[:200]}
    except BaseException as e:  # noqa: BLE001
        return {"outcome": "unexpected", "where": "call", "error": f"{type(e).__name__}: {e}"[:500]}
    return {"outcome": "ran"}


def main(directory: str) -> None:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".fedcore"))
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        result = run_one(os.path.join(directory, name))
        print(json.dumps({"name": name, **result}), flush=True)
    print(json.dumps({"done": len(names)}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1])

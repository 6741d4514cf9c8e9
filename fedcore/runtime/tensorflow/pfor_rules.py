"""Vectorization rules that TensorFlow's ``pfor`` lacks, for ops that client code reaches.

For an op with no rule, ``tf.vectorized_map`` runs the op once per client in
a graph loop.  Inside a function call (a ``tf_computation``, Keras code) it
says so only at debug level.  The rules here let such ops run on the clients
axis instead.  Each is registered only where TensorFlow has none of its own.

* ``Bitcast``: Keras 3's ``argmax``, and so its accuracy metrics, reads the
  sign bit of floats by a bitcast to int32 (to order -0.0 as numpy does).  A
  bitcast changes only the trailing axis, and only when the two types differ
  in size, so it applies to the stacked tensor as it is.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops.parallel_for import pfor as _pfor


def _bitcast(pfor_input):
    x, target = pfor_input.stacked_input(0), pfor_input.get_attr("type")
    if target.size > x.dtype.size and (x.shape.rank is None or x.shape.rank < 2):
        # Widening consumes each client's trailing axis; without one (or not knowing) the clients
        # axis would be consumed instead: pfor's loop runs it, and fails as one client would.
        raise _pfor.ConversionNotImplementedError("a widening Bitcast of values that may have no axis")
    return _pfor.wrap(tf.bitcast(x, target), True)


_RULES = {"Bitcast": _bitcast}


def register() -> None:
    """Registers the rules that TensorFlow does not already have (idempotent)."""
    for op_type, rule in _RULES.items():
        if op_type not in _pfor._pfor_converter_registry:  # noqa: SLF001 - pfor's own registry
            _pfor.RegisterPFor(op_type)(rule)


register()

__all__ = ["register"]

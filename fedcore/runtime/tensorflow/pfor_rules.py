"""Vectorization rules that TensorFlow's ``pfor`` lacks, for ops that client code reaches.

For an op with no rule, ``tf.vectorized_map`` runs the op once per client in
a graph loop.  Inside a function call (a ``tf_computation``, Keras code) it
says so only at debug level.  The rules here let such ops run on the clients
axis instead.  Each is registered only where TensorFlow has none of its own.

* ``Bitcast``: Keras 3's ``argmax``, and so its accuracy metrics, reads the
  sign bit of floats by a bitcast to int32 (to order -0.0 as numpy does).  A
  bitcast changes only the trailing axis, and only when the two types differ
  in size, so it applies to the stacked tensor as it is.

It also holds ``vectorized_map``, fedcore's way into pfor.  TensorFlow's
``tf.vectorized_map`` reads each client's slice of an input with a gather
that pfor passes through uncopied only when the number of clients is static.
Where it is known only at run time (a vectorized call on a subset of the
clients: the clients of one partial-batch size, say), pfor gathers every
input whole, a copy per call, behind a select that stands for broadcasting.
``vectorized_map`` reads each input at the loop index itself and marks those
reads, and pfor's gather rule passes a marked read through as the input it
reads, whatever the number of clients: it has exactly that many rows, which
``vectorized_map`` checks.  Every other gather converts as TensorFlow's own
rule converts it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List

import tensorflow as tf
from tensorflow.python.ops.parallel_for import control_flow_ops as _control_flow
from tensorflow.python.ops.parallel_for import pfor as _pfor
from tensorflow.python.util import object_identity


def _bitcast(pfor_input):
    x, target = pfor_input.stacked_input(0), pfor_input.get_attr("type")
    if target.size > x.dtype.size and (x.shape.rank is None or x.shape.rank < 2):
        # Widening consumes each client's trailing axis; without one (or not knowing) the clients
        # axis would be consumed instead: pfor's loop runs it, and fails as one client would.
        raise _pfor.ConversionNotImplementedError("a widening Bitcast of values that may have no axis")
    return _pfor.wrap(tf.bitcast(x, target), True)


def _in_top_k(pfor_input):
    k, k_stacked, _ = pfor_input.input(2)
    if k_stacked:
        raise _pfor.ConversionNotImplementedError("InTopKV2 with a k that differs between clients")
    pfor_input.stack_inputs([0, 1])
    predictions, targets = pfor_input.stacked_input(0), pfor_input.stacked_input(1)
    # Each row is ranked on its own: the clients' rows are rows of one batch.
    rows = tf.math.in_top_k(tf.reshape(targets, [-1]), tf.reshape(predictions, [-1, tf.shape(predictions)[-1]]), k)
    return _pfor.wrap(tf.reshape(rows, tf.shape(targets)), True)


_RULES = {"Bitcast": _bitcast, "InTopKV2": _in_top_k}


class _Reads(threading.local):
    ops: Any = None  # the gathers that read an input at the loop index, in the vectorized_map being converted


_READS = _Reads()


def _gather_rule(tensorflows: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(pfor_input):
        reads = _READS.ops
        if reads is not None and pfor_input.op in reads:
            param, param_stacked, _ = pfor_input.input(0)
            indices, _, _ = pfor_input.input(1)
            if (not param_stacked and indices is pfor_input.pfor.all_indices
                    and not pfor_input.pfor.all_indices_partitioned):
                return _pfor.wrap(param, True)  # row i of the input, for every i: the input itself
        return tensorflows(pfor_input)

    convert.fedcore_reads = True
    return convert


def register() -> None:
    """Registers the rules that TensorFlow does not already have, and the reads (idempotent)."""
    registry = _pfor._pfor_converter_registry  # noqa: SLF001 - pfor's own registry
    for op_type, rule in _RULES.items():
        if op_type not in registry:
            _pfor.RegisterPFor(op_type)(rule)
    for op_type in ("Gather", "GatherV2"):
        if op_type in registry and not getattr(registry[op_type], "fedcore_reads", False):
            registry[op_type] = _gather_rule(registry[op_type])


def vectorized_map(fn: Callable[[List[Any]], Any], inputs: List[tf.Tensor]) -> Any:
    """``tf.vectorized_map(fn, inputs)`` for inputs that all have the same number of rows (clients).

    Unlike TensorFlow's, it reads each input without a copy also where that
    number is known only at run time (see the module's docstring).
    """
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    firsts = [x.shape[0] if x.shape.rank else None for x in inputs]
    if not inputs or any(x.shape.rank == 0 for x in inputs):
        return tf.vectorized_map(fn, inputs)
    static = {d for d in firsts if d is not None}
    if len(static) > 1:
        return tf.vectorized_map(fn, inputs)  # some rows are broadcast: TensorFlow's own reading
    # The number of rows: a static one where any input has it, else the first input's; every input
    # whose number is known only at run time is checked against it.
    loop_len = next(iter(static)) if static else tf.shape(inputs[0])[0]
    unchecked = inputs[0] if not static else None
    checks = [tf.debugging.assert_equal(tf.shape(x)[0], loop_len,
                                        message="inputs of one vectorized call differ in their number of rows")
              for x, d in zip(inputs, firsts) if d is None and x is not unchecked]
    if checks:  # on the inputs: the reads pass them through, so the call's results depend on nothing else
        with tf.control_dependencies(checks):
            inputs = [tf.identity(x) for x in inputs]
    reads = object_identity.ObjectIdentitySet()

    def loop_fn(i):
        rows = []
        for x in inputs:
            row = tf.gather(x, i)
            reads.add(row.op)
            rows.append(row)
        return fn(rows)

    prior, _READS.ops = _READS.ops, reads
    try:
        return _control_flow.pfor(loop_fn, loop_len, fallback_to_while_loop=True, warn=True)
    finally:
        _READS.ops = prior


register()

__all__ = ["register", "vectorized_map"]

"""The vectorized table: intrinsics inside client work that runs for all clients at once.

Under ``strategy='vectorized'`` (and first under ``'auto'``) a client
function is lowered once with every value carrying the clients axis
(``Batched``).  Each intrinsic says here how it runs that way, or refuses
with ``NotVectorizable`` so that 'auto' falls back to the sequential loop.
"""

from __future__ import annotations

from typing import Any, List

import tensorflow as tf

from fedcore.compiler import intrinsics as defs
from fedcore.compiler.intrinsics import Kind
from fedcore.runtime.tensorflow.lowering import (
    BatchedSequence,
    Compiler,
    Lowered,
    add,
    cast_flat,
    flat,
    unflatten,
    unwrap_batched,
)
from fedcore.runtime.tensorflow.tables import BATCHED, NotVectorizable
from fedcore.runtime.tensorflow.values import Batched
from fedcore.structure import Struct
from fedcore.types import Type


def _refuse(definition: defs.IntrinsicDef):
    def apply(c: Compiler, arg, t):
        raise NotVectorizable(f"{definition.uri} inside client work")

    return apply


# Federated intrinsics never run inside one client's work; sequence_map and
# sequence_sum build or read a per-client tf.data pipeline, which has no clients axis.
for _kind in Kind:
    if _kind is not Kind.GENERIC:
        BATCHED.register_kind(_kind, _refuse)


@BATCHED.register(defs.GENERIC_PLUS)
def _generic_plus_batched(c: Compiler, arg, t):
    summed = add(unwrap_batched(arg[0], c.n), unwrap_batched(arg[1], c.n))
    return unflatten([Batched(x) for x in flat(summed)], t.result)


# generic_zero is a value, not a function: it is never called on batched arguments.
BATCHED.register(defs.GENERIC_ZERO)(_refuse(defs.GENERIC_ZERO))


@BATCHED.register(defs.SEQUENCE_REDUCE)
def _sequence_reduce_batched(c: Compiler, arg, t):
    seq, zero, op = arg
    if not isinstance(seq, BatchedSequence):
        raise NotVectorizable("sequence_reduce over a dataset that is not client data")
    element_type, acc_type = t.parameter[0].element, t.parameter[1]
    acc0 = cast_flat(unwrap_batched(zero, c.n), acc_type)
    data = seq.steps
    steps, lengths = tf.cast(data.num_steps, tf.int32), data.lengths

    def body(s, *acc_flat):
        element = unflatten([Batched(x) for x in data.step(s)], element_type)
        acc = unflatten([Batched(a) for a in acc_flat], acc_type)
        new = op.batched(Struct.unnamed(acc, element))
        new_flat = cast_flat(unwrap_batched(new, c.n), acc_type)
        active = tf.cast(s, lengths.dtype) < lengths

        def masked():
            out = []
            for old, updated in zip(acc_flat, new_flat):
                mask = tf.reshape(active, [-1] + [1] * (updated.shape.rank - 1))
                # Broadcasting against the mask's unknown first dimension would lose the static clients
                # axis, which the loop needs to keep when there is one client.
                out.append(tf.ensure_shape(tf.where(mask, updated, old), old.shape))
            return out

        # Clients whose data has ended keep their state; while all are active, no mask is needed.
        return [s + 1] + list(tf.cond(tf.reduce_all(active), lambda: new_flat, masked))

    result = list(tf.while_loop(lambda s, *_: s < steps, body, [tf.constant(0)] + acc0)[1:])
    if data.tail_sizes is not None:
        result = _partial_batches(c, op, data, element_type, acc_type, result)
    return unflatten([Batched(a) for a in result], acc_type)


def _partial_batches(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc_flat: List[Any]):
    """Each client's last, partial batch, one client at a time: their sizes differ."""
    sizes = data.tail_sizes

    def body(i, *acc):
        def run():
            own = unflatten([a[i] for a in acc], acc_type)
            element = unflatten(data.tail(i), element_type)
            new = cast_flat(op(Struct.unnamed(own, element)), acc_type)
            return [tf.tensor_scatter_nd_update(a, [[i]], tf.expand_dims(v, 0)) for a, v in zip(acc, new)]

        return [i + 1] + list(tf.cond(sizes[i] > 0, run, lambda: list(acc)))

    try:
        out = tf.while_loop(lambda i, *_: i < c.n, body, [tf.constant(0)] + list(acc_flat),
                            parallel_iterations=1)
    except (TypeError, ValueError) as e:  # the step needs values that only exist on the clients axis
        raise NotVectorizable(f"the last, partial batches: {e}") from None
    return list(out[1:])


"""The vectorized table: intrinsics inside client work that runs for all clients at once.

Under ``strategy='vectorized'`` (and first under ``'auto'``) a client
function is lowered once with every value carrying the clients axis
(``Batched``).  Each intrinsic says here how it runs that way, or refuses
with ``NotVectorizable`` so that 'auto' falls back to the sequential loop.
"""

from __future__ import annotations

from typing import Any, List, Optional

import tensorflow as tf

from fedcore.compiler import intrinsics as defs
from fedcore.compiler.intrinsics import Kind
from fedcore.compiler.computation import masked_element_type
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.compiler.tf_function import onednn_on
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
from fedcore.runtime.tensorflow.tables import BATCHED, NeedsAllClients, NotVectorizable
from fedcore.runtime.tensorflow.values import Batched, has_gpu, tensors
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
    if op.captures_batched or c.static_shapes:
        # The step reads other clients-axis values (it must see all clients, in their order), or the
        # program is for XLA (static shapes only).
        return unflatten([Batched(a) for a in _masked(c, op, seq.steps, element_type, acc_type, acc0)], acc_type)
    fixed = _fixed_leaves(op, zero, acc_type)
    carried = [a for j, a in enumerate(acc0) if j not in fixed]
    data = seq.steps
    try:
        if not carried and not op.stateful:  # nothing changes from step to step, and no op must run
            out = iter([])
        elif not carried:  # the step's stateful ops (its asserts, say) run on every element, as in the reference
            return unflatten([Batched(a) for a in _masked(c, op, seq.steps, element_type, acc_type, acc0)], acc_type)
        elif _sums_only(op, fixed, len(acc0)):
            out = iter(_map_sum(c, op, data, element_type, acc_type, carried, fixed))
        else:
            out = iter(tf.cond(_uniform_cohort(data),
                               lambda: _uniform(c, op, data, element_type, acc_type, carried, fixed),
                               lambda: _ragged(c, op, data, element_type, acc_type, carried, fixed)))
    except NeedsAllClients:
        return unflatten([Batched(a) for a in _masked(c, op, seq.steps, element_type, acc_type, acc0)], acc_type)
    return unflatten([fixed[j] if j in fixed else Batched(next(out)) for j in range(len(acc0))], acc_type)


# Fewer clients than this, on a CPU, and the batched steps of training cost more than each client's own.
BATCHED_STEPS_MIN_CLIENTS = 64


def batched_steps_pay(num_clients: int) -> bool:
    """Whether ``auto`` steps client work that carries state from batch to batch (training) on the
    clients axis: with a GPU, or where TensorFlow's CPU kernels are oneDNN's and the cohort has at
    least ``BATCHED_STEPS_MIN_CLIENTS`` clients.

    Where the kernels are Eigen's, the batched steps cost more than each
    client's own steps in the sequential loop: FedAvg on the seed and ragged
    workloads took 0.40x to 0.75x the vectorized floor's time in the loop, and
    0.96x to 1.39x vectorized.  Where they are oneDNN's, the loop still won
    below about 50 clients (0.42x to 0.68x the batched steps' time on ragged
    cohorts of 10 to 50 clients, 0.84x to 0.89x on the seed workload's equal
    ones at 10 to 30), and the batched steps won on 100 and 1000 equal clients
    (docs/benchmarks.md).  Reductions that only add (an evaluation) stay
    vectorized: there the one pass over all batches wins either way.
    """
    return _why_batched_steps_cost_more(num_clients) is None


def _why_batched_steps_cost_more(num_clients: int) -> Optional[str]:
    """Why batched training steps would not pay here (``batched_steps_pay``), or None where they do."""
    if has_gpu():
        return None
    if not onednn_on():
        return "where TensorFlow's CPU kernels are Eigen's (oneDNN off) batched steps cost more than each client's own"
    if num_clients < BATCHED_STEPS_MIN_CLIENTS:
        return (f"on a CPU with fewer than {BATCHED_STEPS_MIN_CLIENTS} clients ({num_clients} here) batched steps "
                "cost more than each client's own")
    return None


def _check_steps_pay(c: Compiler) -> None:
    """Called once a batched step is built: 'auto' then leaves it, for the sequential loop, where it does not pay."""
    if c.strategy == "auto" and not batched_steps_pay(c.n):
        raise NotVectorizable(f"its steps carry state from batch to batch, and {_why_batched_steps_cost_more(c.n)}")


def _uniform_cohort(data: Any) -> Any:
    """Whether every client has the same number of full batches and no partial one (a tensor)."""
    lengths = tf.cast(data.lengths, tf.int32)
    same = tf.equal(tf.reduce_min(lengths), tf.reduce_max(lengths))
    if data.tail_sizes is None:
        return same
    return tf.logical_and(same, tf.equal(tf.reduce_max(tf.cast(data.tail_sizes, tf.int32)), 0))


def _everyones(c: Compiler, data: Any, s: Any) -> List[Any]:
    """Element ``s`` of every client, on the static clients axis."""
    return [tf.ensure_shape(x, [c.n] + x.shape.as_list()[1:]) for x in tensors(data.take(s, tf.range(c.n)))]


def _uniform(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc0: List[Any],
             fixed: dict) -> List[Any]:
    """Clients with equal data: every step on all clients at once, with the static clients axis."""
    steps = tf.reduce_max(tf.cast(data.lengths, tf.int32))

    def body(s, *acc):
        new = _step(c, op, acc_type, element_type, list(acc), _everyones(c, data, s), c.n, fixed)
        _check_steps_pay(c)
        return [s + 1] + [tf.ensure_shape(x, a.shape) for x, a in zip(new, acc)]

    return list(tf.while_loop(lambda s, *_: s < steps, body, [tf.constant(0)] + list(acc0))[1:])


def _fixed_leaves(op: Lowered, zero: Any, acc_type: Type) -> dict:
    """The accumulator's leaves that start equal on all clients and that the step returns unchanged.

    They stay without a clients axis and out of the loop: a model carried
    through an evaluation, say, is not copied per client, and the step's
    math on it runs as one operation for all clients.
    """
    passthrough = getattr(op, "passthrough", None) or ()
    leaves = flat(zero)
    if len(leaves) != len(leaf_types(acc_type)) or any(isinstance(v, Batched) and isinstance(v.value, Struct)
                                                        for v in leaves):
        return {}
    return {
        j: tf.convert_to_tensor(v, dtype=t.tf_dtype)
        for j, (v, t) in enumerate(zip(leaves, leaf_types(acc_type)))
        if j < len(passthrough) and passthrough[j] == j and not isinstance(v, (Batched, tf.data.Dataset))
    }


def _step(c: Compiler, op: Lowered, acc_type: Type, element_type: Type, acc_flat: List[Any], element: List[Any],
          clients: Any, fixed: Optional[dict] = None, shared_acc: bool = False) -> List[Any]:
    """One vectorized call of the reduction's step for ``clients`` (a subset of the clients, on axis 0).

    ``acc_flat`` holds the carried leaves, one row per client, or, when
    ``shared_acc``, one value that every client starts from (no clients axis:
    pfor reads it as it is, without a copy per client).  ``fixed`` holds the
    others (see ``_fixed_leaves``), which are passed without a clients axis
    and left out of the result.
    """
    fixed = fixed or {}
    carried = iter(acc_flat)
    whole = c.n
    c.n = clients  # values without a clients axis are tiled to this many
    try:
        acc = unflatten([fixed[j] if j in fixed else next(carried) if shared_acc else Batched(next(carried))
                         for j in range(len(leaf_types(acc_type)))], acc_type)
        element = [x if isinstance(x, Batched) else Batched(x) for x in element]
        new = op.batched(Struct.unnamed(acc, unflatten(element, element_type)))
        leaves, types = flat(new), leaf_types(acc_type)
        if len(leaves) != len(types):  # a leaf holds a whole struct: unwrap all of it
            leaves = flat(unwrap_batched(new, clients))
        return [tf.convert_to_tensor(unwrap_batched(x, clients), dtype=lt.tf_dtype)
                for j, (x, lt) in enumerate(zip(leaves, types)) if j not in fixed]
    finally:
        c.n = whole


def _ragged(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc0: List[Any],
            fixed: dict) -> List[Any]:
    """Every client's steps on a clients axis, costing about the sum of the real steps.

    Clients are sorted by their number of full batches, longest first, so at
    step ``s`` the clients still running are a prefix of that order: each step
    runs on that prefix only, and a client leaves the batch (its state is put
    aside) after its last full batch.  Then the partial last batches run,
    one vectorized call per distinct partial size, on the clients that have
    one of that size.  Each client still sees its own batches in order.
    """
    n = c.n
    lengths = tf.cast(data.lengths, tf.int32)
    perm = tf.argsort(lengths, direction="DESCENDING", stable=True)
    sorted_lengths = tf.gather(lengths, perm)
    acc_sorted = [tf.gather(a, perm) for a in acc0]

    def running(s):
        return tf.reduce_sum(tf.cast(sorted_lengths > s, tf.int32))

    k0 = running(0)
    # The states put aside, in chunks: chunk i holds the clients that retire i steps before the longest ends,
    # so the chunks concatenate to the sorted order.  Chunk ``last`` holds those with no full batch.
    last = tf.reduce_max(tf.concat([lengths, [0]], 0))
    retired = tuple(tf.TensorArray(a.dtype, size=last + 1, infer_shape=False,
                                   element_shape=tf.TensorShape([None]).concatenate(a.shape[1:]))
                    .write(last, a[k0:]) for a in acc_sorted)
    active0 = tuple(a[:k0] for a in acc_sorted)

    def body(s, k, active, retired):
        new = _step(c, op, acc_type, element_type, list(active), data.take(s, perm[:k]), k, fixed)
        _check_steps_pay(c)
        k_next = running(s + 1)
        # Gathered, not sliced: a slice would share the step's whole buffer (all k clients' states) and
        # keep it alive until the loop ends, one buffer per step.
        leaving = tf.range(k_next, k)
        retired = tuple(ta.write(last - 1 - s, tf.gather(x, leaving)) for ta, x in zip(retired, new))
        return s + 1, k_next, tuple(x[:k_next] for x in new), retired

    _, _, _, retired = tf.while_loop(
        lambda s, k, *_: k > 0, body, (tf.constant(0), k0, active0, retired),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([]),
                          tuple(tf.TensorShape([None]).concatenate(a.shape[1:]) for a in acc_sorted),
                          tuple(tf.TensorShape(None) for _ in acc_sorted)),
    )
    acc_sorted = [tf.ensure_shape(ta.concat(), a.shape) for ta, a in zip(retired, acc_sorted)]
    if data.tail_sizes is not None:
        acc_sorted = _tails(c, op, data, element_type, acc_type, acc_sorted, perm, fixed)
    inverse = tf.math.invert_permutation(perm)
    return [tf.ensure_shape(tf.gather(a, inverse), [n] + a.shape.as_list()[1:]) for a in acc_sorted]


def _sums_only(op: Lowered, fixed: dict, num_leaves: int) -> bool:
    """Whether the step only adds to each carried leaf a value that no carried leaf changes.

    Then ``reduce(data, a, step)`` is ``a`` plus the sum of every element's
    increment: the increments need no order and can all be computed at once.
    """
    increments = getattr(op, "increments", None)
    if increments is None or len(increments) != num_leaves:
        return False
    carried = frozenset(j for j in range(num_leaves) if j not in fixed)
    return all(increments[j] is not None and increments[j][0] == j and not increments[j][1] & carried
               for j in carried)


# The sizes of the chunks of elements whose increments one vectorized call computes: as many of the
# largest as fit, then of the next, and so on.  Each size is static, so that pfor reads every element by
# its own index without copying the inputs; the largest bounds the memory of one call's inputs.
MAP_SUM_CHUNKS = (1024, 256, 64, 16, 4, 1)


def _map_sum(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc0: List[Any],
             fixed: dict) -> List[Any]:
    """A reduction whose step only adds (see ``_sums_only``): every element's increment at once, summed per client.

    The step runs on a zero accumulator (``0 + g`` is ``g``), vectorized over
    the elements of all clients together rather than over clients, so a
    cohort of ragged clients costs one pass over its examples.  Sums are in
    another order than the reference's, equal within float rounding (and
    exactly, modulo 2^bits, for integers, which wrap as the step's own
    ``+`` does).  The partial last batches take one call per distinct size,
    or, where the step has a masked form (``computation.with_masked_form``)
    that also only adds, one call of it on all of them padded to the full
    batch size.
    """
    n = c.n
    lengths = tf.cast(data.lengths, tf.int32)
    total = tf.reduce_sum(lengths)
    owner = tf.repeat(tf.range(n), lengths)  # element e belongs to client owner[e] ...
    position = tf.range(total) - tf.repeat(tf.cumsum(lengths, exclusive=True), lengths)  # ... as its step position[e]

    # The start that every element's call shares.  Where its shape is static it is made inside the loop, as
    # a constant: one node there, where a loop input costs several in every turn.
    outside = [None if a.shape[1:].is_fully_defined() else tf.zeros(tf.shape(a)[1:], a.dtype) for a in acc0]

    def increments(element, k, step=op, step_element_type=element_type):
        zeros = [tf.zeros(a.shape[1:], a.dtype) if z is None else z for a, z in zip(acc0, outside)]
        return _step(c, step, acc_type, step_element_type, zeros, element, k, fixed, shared_acc=True)

    def chunks(start, size, sums):
        count = (total - start) // size

        def body(i, sums):
            at = start + i * size + tf.range(size)
            own = tf.gather(owner, at)
            if data.elements is not None:
                element = data.elements(start + i * size, size)
            else:
                element = [tf.ensure_shape(x, [size] + x.shape.as_list()[1:])
                           for x in tensors(data.take(tf.gather(position, at), own))]
            new = increments(element, size)
            return i + 1, [s + tf.math.unsorted_segment_sum(x, own, n) for s, x in zip(sums, new)]

        _, sums = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), sums))
        return start + count * size, list(sums)

    start, sums = tf.constant(0), [tf.zeros_like(a) for a in acc0]
    for size in MAP_SUM_CHUNKS:
        start, sums = chunks(start, size, sums)
    masked = op.masked
    if (data.tail_sizes is not None and masked is not None and data.padded_tails is not None
            and _sums_only(masked, fixed, len(leaf_types(acc_type)))):
        # The step's masked form takes every partial batch padded to the full batch size: one call for all.
        leaves, mask, clients = data.padded_tails()
        new = increments(leaves + [mask], tf.size(clients), masked, masked_element_type(element_type))
        sums = [s + tf.math.unsorted_segment_sum(x, clients, n) for s, x in zip(sums, new)]
    elif data.tail_sizes is not None:
        # The partial batches, one vectorized call per size.  What locates each size's clients and rows
        # is computed here once, so that a call does only its own work.
        sizes = tf.cast(data.tail_sizes, tf.int32)
        order = tf.argsort(sizes, stable=True)  # the clients by the size of their partial batch, then by client
        distinct, _, counts = tf.unique_with_counts(tf.gather(sizes, order))
        offsets = tf.cumsum(counts, exclusive=True)  # where each size's clients begin in ``order``
        before = tf.cumsum(distinct * counts, exclusive=True)  # the rows of the partial batches of smaller sizes
        # One row per size that has clients, read by the loop as one input (each input of a loop costs nodes
        # in every turn): the size, its clients' count, where they begin in ``order``, and ``before``.
        blocks = tf.boolean_mask(tf.stack([distinct, counts, offsets, before], axis=1), distinct > 0)

        def tail_body(j, sums):
            r, k, at, rows_before = tf.unstack(blocks[j], 4)
            where = order[at : at + k]
            new = increments(data.tail(where, r) if data.tails_of is None else data.tails_of(rows_before, r, k), k)
            return j + 1, [tf.tensor_scatter_nd_add(s, where[:, None], x) for s, x in zip(sums, new)]

        try:
            # The sizes' calls are independent (only their sums meet), and each is short ops in a chain:
            # let up to 32 of them run at once, not TensorFlow's default 10.
            _, sums = tf.while_loop(lambda j, _: j < tf.shape(blocks)[0], tail_body, (tf.constant(0), sums),
                                    parallel_iterations=32)
        except (TypeError, ValueError) as e:
            raise NotVectorizable(f"the last, partial batches: {e}") from None
    # The step's own "+" (wrapping for integers), not fedcore's checked sum.
    return [tf.ensure_shape(a + s, a.shape) for a, s in zip(acc0, sums)]


def _tails(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc_sorted: List[Any],
           perm: Any, fixed: dict) -> List[Any]:
    """The partial last batches: one vectorized call per distinct size, on the clients with that size."""
    sizes = tf.gather(tf.cast(data.tail_sizes, tf.int32), perm)
    distinct = tf.unique(tf.boolean_mask(sizes, sizes > 0))[0]

    def body(j, acc):
        r = distinct[j]
        where = tf.cast(tf.where(tf.equal(sizes, r))[:, 0], tf.int32)
        k = tf.size(where)
        own = [tf.gather(a, where) for a in acc]
        new = _step(c, op, acc_type, element_type, own, data.tail(tf.gather(perm, where), r), k, fixed)
        return j + 1, [tf.tensor_scatter_nd_update(a, where[:, None], x) for a, x in zip(acc, new)]

    try:
        _, out = tf.while_loop(lambda j, _: j < tf.size(distinct), body, (tf.constant(0), list(acc_sorted)))
    except (TypeError, ValueError) as e:
        raise NotVectorizable(f"the last, partial batches: {e}") from None
    return list(out)


def _masked(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc0: List[Any]) -> List[Any]:
    """All clients step together, padded to the longest; a client whose data has ended keeps its state."""
    steps, lengths = tf.cast(data.num_steps, tf.int32), data.lengths

    def body(s, *acc_flat):
        new_flat = _step(c, op, acc_type, element_type, list(acc_flat), _everyones(c, data, s), c.n)
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
    return result


def _partial_batches(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc_flat: List[Any]):
    """Each client's last, partial batch, one client at a time (the step is called unbatched)."""
    sizes = tf.cast(data.tail_sizes, tf.int32)

    def body(i, *acc):
        def run():
            own = unflatten([a[i] for a in acc], acc_type)
            element = unflatten([x[0] for x in tensors(data.tail(tf.reshape(i, [1]), sizes[i]))], element_type)
            new = cast_flat(op(Struct.unnamed(own, element)), acc_type)
            return [tf.tensor_scatter_nd_update(a, [[i]], tf.expand_dims(v, 0)) for a, v in zip(acc, new)]

        return [i + 1] + list(tf.cond(sizes[i] > 0, run, lambda: list(acc)))

    try:
        out = tf.while_loop(lambda i, *_: i < c.n, body, [tf.constant(0)] + list(acc_flat),
                            parallel_iterations=1)
    except (TypeError, ValueError) as e:  # the step needs values that only exist on the clients axis
        raise NotVectorizable(f"the last, partial batches: {e}") from None
    return list(out[1:])

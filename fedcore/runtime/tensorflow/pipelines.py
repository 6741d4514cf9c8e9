"""Reading a client's tf.data pipeline once, and replaying its shuffle every round.

A client dataset is usually a deterministic prefix (slices, maps, repeat)
followed by ``shuffle(buffer)`` and ``batch(size)``.  Reading that whole
pipeline through tf.data on every round is what makes simulation slow.  This
module splits a pipeline into

* a **base**: the deterministic prefix, read once and cached;
* a **plan**: how every round turns the base into elements: repeat it,
  shuffle it with tf.data's buffer algorithm (an order drawn from the seed and
  an explicit epoch, see ``shuffle_rng``), and batch it.

``analyze`` returns that split, or tells that a pipeline must be read through
tf.data on every use (when its randomness is somewhere the plan cannot
replay, e.g. a map that draws random numbers).  ``fingerprint`` names a
dataset by its content, for caches of what was read from it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Optional, Tuple

import attrs
import numpy as np
import tensorflow as tf

from fedcore.compiler import tf_bridge

# Pipeline stages that pass elements through unchanged.
_TRANSPARENT = {"_PrefetchDataset", "PrefetchDataset", "_OptionsDataset", "_ModelDataset", "_MaxIntraOpParallelismDataset",
                "_PrivateThreadPoolDataset", "_AutoShardDataset"}
_SHUFFLE = {"_ShuffleDataset", "ShuffleDataset"}
_BATCH = {"_BatchDataset", "BatchDataset"}
_REPEAT = {"_RepeatDataset", "RepeatDataset"}
# Sources that draw random values on every iteration.
_RANDOM_SOURCES = {"_RandomDataset", "RandomDataset"}


@attrs.frozen
class Plan:
    """How one round's elements come from the base.

    ``kind`` is 'static' (the whole dataset is deterministic: its elements are
    the base's, in order), 'batched' (``repeat`` copies of a deterministic base
    batched by ``batch_size``, in order) or 'shuffled' (``repeat`` copies of the
    base go through a shuffle buffer of ``buffer_size``, then are batched by
    ``batch_size`` when it is set).
    """

    kind: str
    base: tf.data.Dataset = attrs.field(eq=False)
    repeat: int = 1
    buffer_size: int = 0
    seed: Optional[Tuple[int, int]] = None
    batch_size: Optional[int] = None
    drop_remainder: bool = False

    @property
    def batching(self) -> Tuple[Optional[int], bool]:
        return self.batch_size, self.drop_remainder


def _parents(ds: Any) -> list:
    inputs = getattr(ds, "_inputs", None)
    if callable(inputs):
        try:
            return list(inputs())
        except Exception:  # noqa: BLE001 - an unusual dataset kind: treat it as opaque
            return []
    parent = getattr(ds, "_input_dataset", None)
    return [] if parent is None else [parent]


def _walk(ds: Any) -> Iterator[Any]:
    stack, seen = [ds], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(_parents(node))


def _functions(ds: Any) -> Iterator[Any]:
    for value in vars(ds).values():
        fn = getattr(value, "function", None)
        if fn is not None and hasattr(fn, "graph"):
            yield fn


def _function_is_random(fn: Any) -> bool:
    try:
        ops = fn.graph.get_operations()
    except Exception:  # noqa: BLE001 - cannot inspect: assume the worst
        return True
    return any(op._is_stateful for op in ops)  # noqa: SLF001 - TF's own flag for ops with side effects


def is_deterministic(ds: tf.data.Dataset) -> bool:
    """True if iterating ``ds`` gives the same elements every time, so they can be cached."""
    for node in _walk(ds):
        name = type(node).__name__
        if name in _SHUFFLE and bool(getattr(node, "_reshuffle_each_iteration", True)):
            return False
        if name in _RANDOM_SOURCES:
            return False
        if any(_function_is_random(fn) for fn in _functions(node)):
            return False
        if not _parents(node) and not _is_known_source(node):
            return False
    return True


def _is_known_source(node: Any) -> bool:
    # Sources whose elements are fixed when the dataset is built.
    return type(node).__name__ in {"_TensorSliceDataset", "TensorSliceDataset", "_TensorDataset", "TensorDataset",
                                   "_RangeDataset", "RangeDataset", "_SparseTensorSliceDataset"}


def _int(value: Any) -> Optional[int]:
    try:
        return int(tf.get_static_value(value))
    except (TypeError, ValueError):
        return None


def _skip_transparent(ds: Any) -> Any:
    while type(ds).__name__ in _TRANSPARENT:
        ds = ds._input_dataset  # noqa: SLF001
    return ds


def analyze(ds: tf.data.Dataset) -> Optional[Plan]:
    """The base/plan split of ``ds``, or None if it must be read through tf.data on every use."""
    deterministic = is_deterministic(ds)
    node = _skip_transparent(ds)
    batch_size, drop = None, False
    if type(node).__name__ in _BATCH:
        batch_size = _int(node._batch_size)  # noqa: SLF001
        drop_value = tf.get_static_value(node._drop_remainder)  # noqa: SLF001
        if batch_size is None or batch_size < 1 or drop_value is None:
            return Plan("static", ds) if deterministic else None
        drop = bool(drop_value)
        node = _skip_transparent(node._input_dataset)  # noqa: SLF001
    if deterministic:
        if batch_size is None:
            return Plan("static", ds)
        # Batches of a fixed sequence: keep the examples, so that the graph can
        # step full batches of all clients together and treat partial ones apart.
        base, repeat = _factor_repeat(node)
        return Plan("batched", base, repeat=repeat, buffer_size=1, batch_size=batch_size, drop_remainder=drop)
    if type(node).__name__ not in _SHUFFLE or not bool(node._reshuffle_each_iteration):  # noqa: SLF001
        return None
    buffer_size = _int(node._buffer_size)  # noqa: SLF001
    seed, seed2 = _int(node._seed), _int(node._seed2)  # noqa: SLF001
    if buffer_size is None or buffer_size < 1 or seed is None or seed2 is None:
        return None
    node = _skip_transparent(node._input_dataset)  # noqa: SLF001
    if not is_deterministic(node):
        return None
    node, repeat = _factor_repeat(node)
    if node is None:
        return None
    return Plan(
        "shuffled",
        node,
        repeat=repeat,
        buffer_size=buffer_size,
        seed=None if (seed, seed2) == (0, 0) else (seed, seed2),
        batch_size=batch_size,
        drop_remainder=drop,
    )


_ELEMENTWISE = {"_MapDataset", "MapDataset", "_ParallelMapDataset", "ParallelMapDataset"}


def _factor_repeat(prefix: Any) -> Tuple[Optional[Any], int]:
    """(base, count) with ``prefix`` == ``base`` repeated ``count`` times, reading only one copy.

    A finite ``repeat(count)`` may sit under element-wise maps, as in
    ``repeat(10).map(f)``; since those maps are deterministic, the prefix's
    first copy is its first ``len(repeat's input)`` elements.
    """
    node = top = _skip_transparent(prefix)
    while type(node).__name__ in _ELEMENTWISE:
        node = _skip_transparent(node._input_dataset)  # noqa: SLF001
    if type(node).__name__ not in _REPEAT:
        return prefix, 1
    count = _int(node._count)  # noqa: SLF001
    if count is None or count < 0:  # repeat() forever has no finite order to replay
        return None, 0
    length = int(node._input_dataset.cardinality())  # noqa: SLF001
    if length < 0:  # unknown length: read every copy
        return prefix, 1
    return (node._input_dataset if node is top else prefix.take(length)), count  # noqa: SLF001


# --------------------------------------------------------------------------
# The shuffle buffer, replayed.


def buffer_shuffle_orders(n: int, buffer_size: int, rng: np.random.Generator, rows: int = 1) -> np.ndarray:
    """``rows`` independent orders of ``n`` elements, as ``shuffle(buffer_size)`` draws them.

    tf.data's shuffle fills a buffer with the first ``buffer_size`` elements;
    then, while input remains, it emits a uniformly chosen buffered element and
    puts the next input element in its place; at the end it emits what is
    left in uniformly random order.  Think of the buffer as slots: slot
    ``s_t``, uniform and independent at each refill step t, is emitted and then
    holds element ``buffer_size + t``.  So step t emits the element that the
    last earlier step choosing the same slot put there, or the slot's initial
    element; the whole order follows from sorting the slot draws, with no
    per-element loop.  Returns int64 ``[rows, n]``.
    """
    if n <= 0:
        return np.zeros((rows, 0), np.int64)
    size = min(buffer_size, n)
    if size == 1:  # a buffer of one keeps the order
        return np.broadcast_to(np.arange(n, dtype=np.int64), (rows, n)).copy()
    steps = n - size
    out = np.empty((rows, n), np.int64)
    final = np.broadcast_to(np.arange(size, dtype=np.int64), (rows, size)).copy()
    if steps:
        slots = rng.integers(0, size, size=(rows, steps))
        by_slot = np.argsort(slots, axis=1, kind="stable")  # groups steps by slot, in time order
        sorted_slots = np.take_along_axis(slots, by_slot, axis=1)
        same_as_previous = np.zeros((rows, steps), bool)
        same_as_previous[:, 1:] = sorted_slots[:, 1:] == sorted_slots[:, :-1]
        # The element a step emits: what the previous step on its slot put there, else the slot's first element.
        previous_step = np.zeros((rows, steps), np.int64)
        previous_step[:, 1:] = by_slot[:, :-1]
        emitted_sorted = np.where(same_as_previous, size + previous_step, sorted_slots)
        row_index = np.arange(rows)[:, None]
        out[row_index, by_slot] = emitted_sorted
        # After the last refill each slot holds what its last step put there.
        last_of_slot = np.ones((rows, steps), bool)
        last_of_slot[:, :-1] = sorted_slots[:, 1:] != sorted_slots[:, :-1]
        r, k = np.nonzero(last_of_slot)
        final[r, sorted_slots[r, k]] = size + by_slot[r, k]
    out[:, steps:] = rng.permuted(final, axis=1)
    return out


def shuffle_rng(plan: Plan, epoch: int = 0, unseeded: Optional[np.random.Generator] = None) -> np.random.Generator:
    """The generator for one pass of a shuffled plan.

    A seeded shuffle's order is a function of its seeds and ``epoch`` only:
    the same epoch gives the same order, whatever ran before, in any process;
    pass a new epoch (e.g. the round number) for a new order.  An unseeded
    shuffle draws from fresh entropy on every pass, as tf.data does: from
    ``unseeded`` when given (one generator for a whole cohort), else from a new one.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"a shuffle epoch must be a non-negative int, got {epoch!r}")
    if plan.seed is None:
        return unseeded if unseeded is not None else np.random.default_rng()
    return np.random.default_rng([plan.seed[0] & 0xFFFFFFFF, plan.seed[1] & 0xFFFFFFFF, int(epoch)])


# --------------------------------------------------------------------------
# Content fingerprints of datasets.


def fingerprint(ds: tf.data.Dataset) -> Optional[str]:
    """Hex SHA-256 of a dataset's content: its tf.data graph, canonicalized (see ``tf_bridge``).

    Two pipelines built the same way from the same data have the same
    fingerprint.  None when the graph cannot be serialized (e.g. it calls
    Python, draws random numbers in a map, or reads a variable).
    """
    try:
        serialized = ds._as_serialized_graph(  # noqa: SLF001 - tf.data's own graph serialization
            external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL
        )
    except (tf.errors.OpError, ValueError, TypeError):
        return None
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(serialized.numpy())
    digest = hashlib.sha256(b"fedcore.dataset.v1\0")
    digest.update(str(ds.element_spec).encode("utf-8") + b"\0")
    digest.update(tf_bridge.canonical_graph_parts(graph_def)[0])
    return digest.hexdigest()


__all__ = ["Plan", "analyze", "buffer_shuffle_orders", "fingerprint", "is_deterministic", "shuffle_rng"]

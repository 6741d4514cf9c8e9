"""How the TensorFlow backend holds values inside one compiled graph.

* unplaced and all-equal values: tensors, ``Struct``s of them, datasets;
* ``{T}@CLIENTS`` with tensor members: ``Stacked``, tensors with a leading
  clients axis;
* ``{T*}@CLIENTS``: every client's data read once into tensors, from which the
  graph rebuilds each client's dataset (sequential strategy) or reads all
  clients' step ``s`` at once (vectorized strategy).  Two layouts:

  - ``StaticData``: the elements themselves, for pipelines that give the same
    elements on every pass (cached across calls);
  - ``ShuffledData``: the examples before a reshuffling ``shuffle`` (cached),
    plus this call's order of them, drawn with tf.data's buffer algorithm from
    the shuffle's seed and an explicit ``epoch``, and the batch size; the
    graph gathers each batch.

What was read is kept in a ``DatasetCache``, keyed by the datasets' content
fingerprints (``pipelines.fingerprint``), bounded, and owned by whoever made
it: an executor passes its own, or the functions here use ``DEFAULT_CACHE``.
"""

from __future__ import annotations

import collections
import functools
import threading
import uuid
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attrs
import numpy as np
import tensorflow as tf

from fedcore.compiler import tf_bridge
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.runtime.tensorflow import pipelines
from fedcore.runtime.datasets import canonical_element, sequence_elements
from fedcore.runtime.executor import ExecutionError
from fedcore.structure import Struct
from fedcore.types import StructType, TensorType, Type


@attrs.frozen
class Stacked:
    """A clients value: ``value`` is a Struct/tensor whose leaves have a leading clients axis."""

    value: Any


@attrs.frozen
class Shared:
    """Inside a ``Stacked`` value: a member that is the same on every client (e.g. a broadcast model).

    It is kept once, without a clients axis; client work reads it as a value
    that does not vary over clients, and it is tiled only where a clients axis
    is really needed (see ``Compiler.stacked``).
    """

    value: Any


@attrs.frozen
class Batched:
    """Inside a vectorized client function: a value with a leading clients axis.

    When ``source`` is set, ``value`` is ``tf.gather(source, rows)``: a
    vectorized call then reads each client's rows from ``source`` itself, so
    that the batch is gathered once (pfor would copy ``value`` again when the
    number of clients is known only at run time), and ``value``, unused, is
    pruned from the graph.
    """

    value: Any
    rows: Any = None
    source: Any = None

    def vectorized_input(self) -> Any:
        """What a vectorized call takes for this value: its rows when it is gathered, else the value."""
        return self.value if self.source is None else self.rows

    def read(self, one: Any) -> Any:
        """Inside the vectorized call, one client's value from its ``vectorized_input()``."""
        return one if self.source is None else tf.gather(self.source, one)


def gathered(source: Any, rows: Any) -> Batched:
    """``source``'s ``rows`` (a clients axis first), to be read where they are used."""
    return Batched(tf.gather(source, rows), rows, source)


def _np_dtype(t: TensorType):
    return object if t.dtype == "string" else t.np_dtype


def _leaf_array(value: Any, t: TensorType) -> np.ndarray:
    return np.asarray(value, dtype=_np_dtype(t))


def _spec(array: Any, open_dims: int) -> tf.TensorSpec:
    dtype = array.dtype if isinstance(array, tf.Tensor) else (tf.string if array.dtype == object else tf.as_dtype(array.dtype))
    shape = list(array.shape)
    return tf.TensorSpec([None] * open_dims + shape[open_dims:], dtype)


# --------------------------------------------------------------------------
# Reading client datasets once.


@attrs.frozen
class _Read:
    """What one client dataset yields, read once: its plan and its base's leaves."""

    plan: Optional[pipelines.Plan]
    examples: Optional[Tuple[np.ndarray, ...]]  # per leaf [L, ...] (shuffled plans)
    elements: Optional[list]  # canonical elements (static plans)


# Plans whose passes are built from the base's examples: an order, then batches.
REPLAYED = ("batched", "shuffled")


def _example_type(element_type: Type, batched: bool) -> Optional[Type]:
    """The type of one example before batching: each leaf without its leading dimension."""
    if not batched:
        return element_type
    if isinstance(element_type, StructType):
        parts = [(n, _example_type(e, True)) for n, e in element_type.elements]
        if any(p is None for _, p in parts):
            return None
        return StructType(parts, container=element_type.container)
    if isinstance(element_type, TensorType):
        if element_type.shape is None:
            return TensorType(element_type.dtype, None)
        if len(element_type.shape) == 0:
            return None
        return TensorType(element_type.dtype, element_type.shape[1:])
    return None


def _check_finite(ds: tf.data.Dataset) -> None:
    if int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
        raise ExecutionError(
            "a client dataset is infinite (e.g. repeat() with no count); federated computations need "
            "finite client datasets: use repeat(n) or take(n)"
        )


def _stack_examples(ds: tf.data.Dataset, example_type: Type) -> Optional[Tuple[np.ndarray, ...]]:
    """All of ``ds``'s examples stacked per leaf, or None when their shapes differ."""
    types = leaf_types(example_type)
    count = int(ds.cardinality())
    if count == 0:
        return tuple(_empty(t) for t in types)
    if count > 0:  # one batch holding everything: a single pass through tf.data
        try:
            whole = next(ds.batch(count).as_numpy_iterator())
        except tf.errors.InvalidArgumentError:  # examples of different shapes
            return None
        leaves = tf_bridge.flatten(canonical_element(whole, example_type), example_type)
        return tuple(_leaf_array(x, t) for x, t in zip(leaves, types))
    elements = sequence_elements(ds, example_type)
    per_leaf = list(zip(*[tf_bridge.flatten(e, example_type) for e in elements])) or [() for _ in types]
    arrays = [[_leaf_array(x, t) for x in leaf] for leaf, t in zip(per_leaf, types)]
    if any(len({a.shape for a in leaf}) > 1 for leaf in arrays):
        return None
    return tuple(np.stack(leaf) if leaf else _empty(t) for leaf, t in zip(arrays, types))


def _empty(t: TensorType) -> np.ndarray:
    shape = tuple(0 if d is None else d for d in (t.shape or ()))
    return np.zeros((0,) + shape, _np_dtype(t))


def _read_uncached(ds: tf.data.Dataset, element_type: Type) -> Tuple[_Read, bool]:
    """Reads ``ds`` once; returns (read, whether later passes may reuse it)."""
    _check_finite(ds)
    plan = pipelines.analyze(ds)
    result = None
    if plan is not None and plan.kind in REPLAYED:
        example_type = _example_type(element_type, plan.batch_size is not None)
        examples = None if example_type is None else _stack_examples(plan.base, example_type)
        if examples is not None:
            result = _Read(plan, examples, None)
        elif plan.kind == "batched":  # examples of different shapes: keep the batches themselves
            plan = pipelines.Plan("static", ds)
    if plan is not None and plan.kind == "static":
        result = _Read(plan, None, sequence_elements(ds, element_type))
    if result is None:  # randomness the plan cannot replay: read through tf.data on every use
        return _Read(None, None, None), False
    return result, True


class _LRU:
    """At most ``size`` entries of at most ``max_bytes`` in all, the least recently used dropped first."""

    def __init__(self, size: int, max_bytes: Optional[int] = None):
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: "collections.OrderedDict[Any, Tuple[Any, int]]" = collections.OrderedDict()

    def get(self, key: Any) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return entry[0]

    def put(self, key: Any, value: Any, nbytes: int = 0) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self.entries[key] = (value, nbytes)
        self.bytes += nbytes
        while self.entries and (
            len(self.entries) > self.size or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple, Struct)):
        return sum(_nbytes(v) for v in value)
    return 64


def _read_size(r: _Read) -> int:
    return _nbytes(list(r.examples or ())) + _nbytes(r.elements or [])


@functools.lru_cache(maxsize=256)
def _type_text(t: Type) -> str:
    """``str(t)``, remembered: a cohort's datasets all ask for it."""
    return str(t)


class DatasetCache:
    """What the TF backend read from client datasets, keyed by their content.

    * reads of single datasets (their elements, or their base examples and
      plan), at most ``max_datasets`` of at most ``max_bytes`` in all;
    * the device tensors of the last ``max_cohorts`` cohorts.

    Keys are content fingerprints (``pipelines.fingerprint``), so a dataset
    built again the same way hits, whatever object it is.  Datasets whose
    graph cannot be serialized get a fresh random token instead, kept while
    the object lives, so only that object hits.  Fingerprints are remembered
    per live dataset object (datasets are immutable), so passing the same
    object again costs nothing.  Nothing here changes a result: only what is
    read again.  An executor makes its own; ``DEFAULT_CACHE`` serves callers
    that pass none.
    """

    def __init__(self, max_datasets: int = 4096, max_bytes: int = 2 << 30, max_cohorts: int = 4):
        for name, value in (("max_datasets", max_datasets), ("max_bytes", max_bytes), ("max_cohorts", max_cohorts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        self._reads = _LRU(max_datasets, max_bytes)
        self._cohorts = _LRU(max_cohorts)
        self._fingerprints: "weakref.WeakKeyDictionary[tf.data.Dataset, str]" = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"DatasetCache({len(self._reads.entries)}/{self._reads.size} datasets, "
                f"{len(self._cohorts.entries)}/{self._cohorts.size} cohorts)")

    def fingerprint(self, ds: tf.data.Dataset) -> str:
        """The content key of ``ds``."""
        with self._lock:
            key = self._fingerprints.get(ds)
            if key is None:
                content = pipelines.fingerprint(ds)
                key = content if content is not None else f"object:{uuid.uuid4().hex}"
                self._fingerprints[ds] = key
            return key

    def read(self, ds: tf.data.Dataset, element_type: Type) -> _Read:
        """Reads ``ds`` once: its elements, or its base examples and plan (cached by content)."""
        key = (self.fingerprint(ds), _type_text(element_type))
        with self._lock:
            cached = self._reads.get(key)
        if cached is not None:
            return cached
        result, reusable = _read_uncached(ds, element_type)
        if reusable:
            with self._lock:
                self._reads.put(key, result, _read_size(result))
        return result

    def cohort(self, kind: str, seqs: Sequence[tf.data.Dataset], element_type: Type, build) -> Any:
        """The device tensors of a cohort (``build()`` on a miss), keyed by its datasets' content."""
        key = self._cohort_key(kind, seqs, element_type)
        with self._lock:
            cached = self._cohorts.get(key)
        if cached is None:
            cached = build()
            with self._lock:
                self._cohorts.put(key, cached)
        return cached

    def cached_cohort(self, kinds: Sequence[str], seqs: Sequence[tf.data.Dataset], element_type: Type) -> Any:
        """The first of ``kinds`` whose cohort of ``seqs`` is cached and not None, else None; builds nothing."""
        _, text, fingerprints = self._cohort_key("", seqs, element_type)
        with self._lock:
            for kind in kinds:
                cached = self._cohorts.get((kind, text, fingerprints))
                if cached is not None:
                    return cached
        return None

    def _cohort_key(self, kind: str, seqs: Sequence[tf.data.Dataset], element_type: Type) -> tuple:
        return kind, _type_text(element_type), tuple(self.fingerprint(s) for s in seqs)

    def clear(self) -> None:
        with self._lock:
            self._reads.clear()
            self._cohorts.clear()


DEFAULT_CACHE = DatasetCache()


def read(ds: tf.data.Dataset, element_type: Type, cache: Optional[DatasetCache] = None) -> _Read:
    """Reads ``ds`` once (cached by content in ``cache``): its elements, or its base examples and plan."""
    return (cache if cache is not None else DEFAULT_CACHE).read(ds, element_type)


def _order(r: _Read, epoch: int, unseeded: Optional[np.random.Generator] = None) -> np.ndarray:
    """A pass's order of a dataset's examples (indices into its base), for shuffle epoch ``epoch``."""
    plan = r.plan
    length = len(r.examples[0]) if r.examples else 0
    n = length * plan.repeat
    order = pipelines.buffer_shuffle_orders(n, plan.buffer_size, pipelines.shuffle_rng(plan, epoch, unseeded))[0]
    return order % max(length, 1)


def _usable(plan: pipelines.Plan, n: int) -> int:
    """How many of ``n`` shuffled examples a pass yields (a partial last batch may be dropped)."""
    if plan.batch_size is not None and plan.drop_remainder:
        return n - n % plan.batch_size
    return n


def client_elements(seq: Any, element_type: Type, epoch: int = 0, cache: Optional[DatasetCache] = None) -> list:
    """One pass over a client's sequence, as canonical elements; a seeded shuffle's order is that of ``epoch``."""
    if not isinstance(seq, tf.data.Dataset):
        return list(seq)
    r = read(seq, element_type, cache)
    if r.plan is None:
        return sequence_elements(seq, element_type)
    if r.elements is not None:
        return r.elements
    order = _order(r, epoch)
    order = order[: _usable(r.plan, len(order))]
    b = r.plan.batch_size
    pieces = order if b is None else [order[i : i + b] for i in range(0, len(order), b)]
    return [tf_bridge.unflatten([np.take(x, idx, axis=0) for x in r.examples], element_type) for idx in pieces]


# --------------------------------------------------------------------------
# A cohort's data.


def _to_device(arrays: Sequence[np.ndarray]) -> List[Any]:
    return [a if a.dtype == object else tf.constant(a) for a in arrays]


# TensorFlow's CPU kernels need their buffers aligned to Eigen's widest vectors (64 bytes with AVX-512).
_ALIGNMENT = 128


@functools.lru_cache(maxsize=None)
def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU in this process (asked once)."""
    return bool(tf.config.list_logical_devices("GPU"))


def _concatenated(pieces: Sequence[np.ndarray]) -> Any:
    """``np.concatenate(pieces)`` as a device tensor, holding the data once.

    On a machine without a GPU the tensor is the concatenated array itself
    (shared through DLPack, in a buffer aligned for TensorFlow): a copy into
    TensorFlow's allocator would keep a second copy of a cohort's examples
    resident, as that allocator keeps what it once held.
    """
    dtype = pieces[0].dtype
    shape = (sum(len(p) for p in pieces),) + pieces[0].shape[1:]
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if dtype.kind not in "fiu" or nbytes == 0 or has_gpu():
        return _to_device([np.concatenate(pieces)])[0]
    buffer = np.empty(nbytes + _ALIGNMENT, np.uint8)
    offset = -buffer.ctypes.data % _ALIGNMENT
    out = buffer[offset : offset + nbytes].view(dtype).reshape(shape)
    np.concatenate(pieces, out=out)
    return tf.experimental.dlpack.from_dlpack(out.__dlpack__())


@attrs.frozen
class StaticData:
    """Every client's elements, concatenated: the general layout.

    ``rows[k]`` holds leaf k of all elements of all clients, concatenated on
    axis 0 (stacked when the leaf is a scalar); ``elem_splits[k]`` delimits the
    elements in it; ``client_splits`` delimits the clients in element space.
    ``dense`` is set when every element has the same shapes: per leaf a
    ``[clients, max_elements, ...]`` array padded with zeros, with ``lengths``.
    """

    element_type: Type
    rows: Tuple[Any, ...]
    elem_splits: Tuple[Any, ...]
    client_splits: Any
    dense: Optional[Tuple[Any, ...]]
    lengths: Any

    def signature_key(self) -> tuple:
        return ("static", tuple((_spec(r, 1).dtype.name, tuple(r.shape[1:])) for r in self.rows),
                None if self.dense is None else tuple(tuple(d.shape[2:]) for d in self.dense))

    def tensors(self) -> List[Any]:
        out = list(self.rows) + list(self.elem_splits) + [self.client_splits, self.lengths]
        return out + list(self.dense or ())

    def specs(self) -> List[tf.TensorSpec]:
        k = len(self.rows)
        return [_spec(a, 2 if i >= 2 * k + 2 else 1) for i, a in enumerate(self.tensors())]

    def in_graph(self, tensors: List[tf.Tensor]) -> "ClientSequences":
        k = len(self.rows)
        dense = tuple(tensors[2 * k + 2 :]) if self.dense is not None else None
        return ClientSequences(self.element_type, tuple(tensors[:k]), tuple(tensors[k : 2 * k]), tensors[2 * k],
                               tensors[2 * k + 1], dense)

    @classmethod
    def build(cls, per_client: List[list], element_type: Type) -> "StaticData":
        types = leaf_types(element_type)
        per_leaf: List[List[np.ndarray]] = [[] for _ in types]
        counts = []
        for elements in per_client:
            counts.append(len(elements))
            for element in elements:
                for k, (leaf, t) in enumerate(zip(tf_bridge.flatten(element, element_type), types)):
                    per_leaf[k].append(_leaf_array(leaf, t))
        rows, splits, dense = [], [], []
        uniform = True
        for k, t in enumerate(types):
            arrays = per_leaf[k]
            empty_shape = tuple(0 if d is None else d for d in (t.shape or ()))
            if t.shape == () or (arrays and all(a.ndim == 0 for a in arrays)):
                rows.append(np.stack(arrays) if arrays else np.zeros((0,), _np_dtype(t)))
                splits.append(np.arange(len(arrays) + 1, dtype=np.int64))
            else:
                rows.append(np.concatenate(arrays, axis=0) if arrays else np.zeros(empty_shape, _np_dtype(t)))
                splits.append(np.cumsum([0] + [a.shape[0] for a in arrays]).astype(np.int64))
            if arrays and len({a.shape for a in arrays}) != 1:
                uniform = False
        counts_arr = np.asarray(counts, np.int64)
        client_splits = np.concatenate([[0], np.cumsum(counts_arr)]).astype(np.int64)
        dense_arrays = None
        if uniform and all(per_leaf) and all(t.dtype != "string" for t in types):
            max_len = int(counts_arr.max()) if len(counts_arr) else 0
            for k, t in enumerate(types):
                shape = per_leaf[k][0].shape
                out = np.zeros((len(counts), max_len) + shape, t.np_dtype)
                for c in range(len(counts)):
                    start, end = client_splits[c], client_splits[c + 1]
                    if end > start:
                        out[c, : end - start] = np.stack(per_leaf[k][start:end])
                dense.append(out)
            dense_arrays = tuple(dense)
        return cls(element_type, tuple(rows), tuple(splits), client_splits, dense_arrays, counts_arr)

    def on_device(self) -> "StaticData":
        return attrs.evolve(
            self,
            rows=tuple(_to_device(self.rows)),
            elem_splits=tuple(_to_device(self.elem_splits)),
            client_splits=tf.constant(self.client_splits),
            lengths=tf.constant(self.lengths),
            dense=None if self.dense is None else tuple(_to_device(self.dense)),
        )


@attrs.frozen
class ShuffledData:
    """Every client's examples before the shuffle, plus this pass's order of them.

    ``examples[k]`` is leaf k of all clients' examples (``[R, ...]``, resident
    on the device across calls); ``order`` is every client's rows of
    ``examples`` in the order this pass yields them, concatenated client after
    client (no padding: its size is the data's, not clients times the
    longest), client c's from ``starts[c]``; ``counts`` is each client's
    number of examples in this pass and ``steps`` its number of elements
    (batches when ``batch_size`` is set).
    """

    element_type: Type
    examples: Tuple[Any, ...]
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    steps: np.ndarray
    batch_size: Optional[int]
    full_batches: bool = attrs.field(default=attrs.Factory(
        lambda self: self.batch_size is None or bool(np.all(np.asarray(self.counts) % self.batch_size == 0)),
        takes_self=True))
    """True when every element is a full batch, so all clients' step ``s`` stack on one axis."""
    contiguous: bool = False
    """True when ``examples`` are laid out as ``_in_order`` lays them out: every client's full batches
    in order, client after client, then the partial last batches by size, then the rest."""

    def signature_key(self) -> tuple:
        return ("shuffled", self.batch_size, self.full_batches, self.contiguous,
                tuple((_spec(x, 1).dtype.name, tuple(x.shape[1:])) for x in self.examples))

    def tensors(self) -> List[Any]:
        return list(self.examples) + [self.order, self.starts, self.counts, self.steps]

    def specs(self) -> List[tf.TensorSpec]:
        return [_spec(a, 1) for a in self.tensors()]

    def in_graph(self, tensors: List[tf.Tensor]) -> "ShuffledSequences":
        k = len(self.examples)
        return ShuffledSequences(self.element_type, tuple(tensors[:k]), *tensors[k : k + 4],
                                 self.batch_size, self.full_batches, self.contiguous)


def _starts(sizes: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of ``sizes`` begins: the exclusive cumulative sum."""
    sizes = np.asarray(sizes, np.int64)
    return np.cumsum(sizes) - sizes


def _examples_on_device(seqs: Sequence[Any], reads: List[_Read], element_type: Type,
                        cache: DatasetCache) -> Tuple[Tuple[Any, ...], np.ndarray]:
    """All clients' base examples concatenated (cached per cohort), and each client's first row."""

    def build():
        sizes = np.asarray([len(r.examples[0]) for r in reads], np.int64)
        offsets = _starts(sizes)
        examples = tuple(_concatenated(leaf) for leaf in zip(*[r.examples for r in reads]))
        return examples, offsets

    return cache.cohort("shuffled", seqs, element_type, build)


def _in_order(reads: List[_Read], element_type: Type, batch_size: int) -> ShuffledData:
    """Unshuffled, unrepeated clients' batches, laid out so that runs of them are slices of the examples.

    First every client's full batches, client after client (a run of full
    batches is then a slice: ``Steps.elements``); then the partial last
    batches, by size and then client (those of one size are then a slice:
    ``Steps.tails_of``); then what a dropped remainder leaves out.  Slices cost
    no copy.
    """
    lengths = np.asarray([len(r.examples[0]) for r in reads], np.int64)
    counts = np.asarray([_usable(r.plan, n) for r, n in zip(reads, lengths)], np.int64)
    head = counts // batch_size * batch_size
    tails = counts - head
    by_size = np.argsort(tails, kind="stable")
    head_at = _starts(head)
    tail_at = np.empty(len(reads), np.int64)
    tail_at[by_size] = head.sum() + _starts(tails[by_size])
    examples = tuple(_concatenated([x[:h] for x, h in zip(leaf, head)]
                                   + [leaf[c][head[c] : counts[c]] for c in by_size]
                                   + [x[n:] for x, n in zip(leaf, counts)])
                     for leaf in zip(*[r.examples for r in reads]))
    pieces = [np.concatenate([head_at[c] + np.arange(head[c]), tail_at[c] + np.arange(tails[c])])
              for c in range(len(reads))]
    order = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros((0,), np.int64)
    starts = _starts(counts)
    steps = -(-counts // batch_size)
    return ShuffledData(element_type, examples, order, starts, counts, steps.astype(np.int64), batch_size,
                        contiguous=True)


def _shuffled(seqs: Sequence[Any], reads: List[_Read], element_type: Type, cache: DatasetCache,
              epoch: int) -> Optional[ShuffledData]:
    batching = {r.plan.batching for r in reads}
    if len(batching) != 1:
        return None
    batch_size, _ = batching.pop()
    if any(len({x.shape[1:] for x in leaf}) > 1 for leaf in zip(*[r.examples for r in reads])):
        return None  # clients' examples differ in shape
    if batch_size is not None and all(r.plan.kind == "batched" and r.plan.repeat == 1 for r in reads):
        return _in_order(reads, element_type, batch_size)
    examples, offsets = _examples_on_device(seqs, reads, element_type, cache)
    unseeded = np.random.default_rng()  # fresh entropy for this call's unseeded shuffles
    orders = [_order(r, epoch, unseeded) for r in reads]
    counts = np.asarray([_usable(r.plan, len(o)) for r, o in zip(reads, orders)], np.int64)
    b = batch_size or 1
    steps = -(-counts // b)
    starts = _starts(counts)
    pieces = [o[:n] + offsets[c] for c, (o, n) in enumerate(zip(orders, counts))]
    order = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros((0,), np.int64)
    return ShuffledData(element_type, examples, order, starts, counts, steps.astype(np.int64), batch_size)


def _on_device(data: Optional[ShuffledData]) -> Optional[ShuffledData]:
    if data is None:
        return None
    return attrs.evolve(data, order=tf.constant(data.order), starts=tf.constant(data.starts),
                        counts=tf.constant(data.counts), steps=tf.constant(data.steps))


def materialize(client_seqs: List[Any], element_type: Type, cache: Optional[DatasetCache] = None, epoch: int = 0):
    """One call's client data: ``ShuffledData`` when every client's pipeline has a replayable shuffle
    with the same batching, else ``StaticData`` (elements read once where the pipeline allows).

    What is read is kept in ``cache`` (``DEFAULT_CACHE`` when None).  Seeded
    shuffles give the order of ``epoch``: the same call gives the same data
    whatever ran before.
    """
    cache = cache if cache is not None else DEFAULT_CACHE
    datasets = all(isinstance(s, tf.data.Dataset) for s in client_seqs) and client_seqs
    if datasets:
        # A cohort read before whose every pass is the same (no shuffle): its layout as it was built.
        cached = cache.cached_cohort(("batched", "static"), client_seqs, element_type)
        if cached is not None:
            return cached
    reads = [cache.read(s, element_type) for s in client_seqs] if datasets else []
    if datasets and all(r.plan is not None and r.plan.kind in REPLAYED and r.examples is not None for r in reads):
        if all(r.plan.kind == "batched" for r in reads):
            # No shuffle: every call yields the same order, so the whole layout is built once, on the device.
            data = cache.cohort("batched", client_seqs, element_type,
                                lambda: _on_device(_shuffled(client_seqs, reads, element_type, cache, epoch)))
        else:
            data = _shuffled(client_seqs, reads, element_type, cache, epoch)
        if data is not None:
            return data
    if datasets and all(r.plan is not None and r.plan.kind == "static" for r in reads):
        return cache.cohort(
            "static", client_seqs, element_type,
            lambda: StaticData.build([r.elements for r in reads], element_type).on_device(),
        )
    return StaticData.build([client_elements(s, element_type, epoch, cache) for s in client_seqs], element_type)


# --------------------------------------------------------------------------
# In-graph views.


def _element_from_leaves(leaves: List[Any], element_type: Type) -> Any:
    return tf_bridge.to_dataset_structure(tf_bridge.unflatten(leaves, element_type), element_type)


@attrs.frozen
class ClientSequences:
    """In-graph view of a StaticData."""

    element_type: Type
    rows: Tuple[tf.Tensor, ...]
    elem_splits: Tuple[tf.Tensor, ...]
    client_splits: tf.Tensor
    lengths: tf.Tensor
    dense: Optional[Tuple[tf.Tensor, ...]]

    def _element(self, e: tf.Tensor) -> Any:
        out = []
        for rows, splits, t in zip(self.rows, self.elem_splits, leaf_types(self.element_type)):
            out.append(rows[e] if t.shape == () else rows[splits[e] : splits[e + 1]])
        return _element_from_leaves(out, self.element_type)

    def dataset(self, client: tf.Tensor) -> tf.data.Dataset:
        """Client ``client``'s dataset, with the element structure its type asks for."""
        start, end = self.client_splits[client], self.client_splits[client + 1]
        return tf.data.Dataset.range(start, end).map(self._element)

    def stepper(self) -> Optional["Steps"]:
        """All clients' elements stepped together, or None if their shapes differ."""
        if self.dense is None:
            return None
        dense = self.dense

        def take(s, clients):
            at = tf.stack([tf.cast(clients, tf.int64), tf.broadcast_to(tf.cast(s, tf.int64), tf.shape(clients))], axis=1)
            return [tf.gather_nd(d, at) for d in dense]

        return Steps(tf.shape(dense[0], out_type=tf.int64)[1], self.lengths, take)


@attrs.frozen
class Steps:
    """Every client's data as steps on a clients axis, for the vectorized strategy.

    ``take(s, clients)`` gives element ``s`` of each client in ``clients`` (an
    int vector; ``s`` is a scalar, or a vector with one step per client), as
    leaves with a leading axis over ``clients`` (tensors, or ``Batched`` values
    gathered where they are used: ``tensors`` makes them tensors); client c's
    data has ``lengths[c]`` such elements, and ``num_steps`` is the most any
    client has.  When ``tail_sizes`` is set, client c then has one more,
    partial batch of ``tail_sizes[c]`` examples (none where it is 0):
    ``tail(clients, r)`` gives the partial batches of ``clients``, which all
    hold ``r`` examples, on one axis (partial batches of different sizes do
    not stack).
    """

    num_steps: Any
    lengths: Any
    take: Callable[[Any, Any], List[Any]]
    tail_sizes: Any = None
    tail: Optional[Callable[[Any, Any], List[Any]]] = None
    elements: Optional[Callable[[Any, int], List[Any]]] = None
    """When set, ``elements(start, size)`` gives full elements ``start .. start + size`` (``size`` a
    static int) of all clients' full elements in order, client after client, step after step, as
    tensors with a leading axis of ``size``, sliced from the data without a copy."""
    tails_of: Optional[Callable[[Any, Any, Any], List[Any]]] = None
    """When set, ``tails_of(before, r, k)`` gives the partial batches of size ``r``, of the ``k`` clients
    that have one, in client order, as tensors with a leading axis of ``k``, sliced without a copy;
    ``before`` is the number of rows in the partial batches of smaller sizes (they come first)."""
    padded_tails: Optional[Callable[[], Tuple[List[Any], Any, Any]]] = None
    """When set, ``padded_tails()`` gives the partial batches of the ``T`` clients that have one, each
    padded to the full batch size ``b`` by repeating its last row: the leaves, ``[T, b, ...]``; the mask,
    ``[T, b]``, True on the real rows; and those clients, ``[T]`` int32, in client order."""


def tensors(leaves: List[Any]) -> List[Any]:
    """A ``Steps.take`` or ``Steps.tail`` result as tensors."""
    return [x.value if isinstance(x, Batched) else x for x in leaves]


@attrs.frozen
class ShuffledSequences:
    """In-graph view of a ShuffledData: batches are gathered from the examples in this pass's order."""

    element_type: Type
    examples: Tuple[tf.Tensor, ...]
    order: tf.Tensor
    starts: tf.Tensor
    counts: tf.Tensor
    lengths: tf.Tensor  # elements per client
    batch_size: Optional[int]
    full_batches: bool
    contiguous: bool = False  # see ShuffledData.contiguous

    def _gather(self, rows: tf.Tensor) -> List[tf.Tensor]:
        return [tf.gather(x, rows) for x in self.examples]

    def dataset(self, client: tf.Tensor) -> tf.data.Dataset:
        client = tf.cast(client, self.counts.dtype)
        start = self.starts[client]
        rows = tf.data.Dataset.from_tensor_slices(self.order[start : start + self.counts[client]])
        if self.batch_size is not None:
            rows = rows.batch(self.batch_size)
        return rows.map(lambda r: _element_from_leaves(self._gather(r), self.element_type))

    def _rows(self, clients: tf.Tensor, first: tf.Tensor, width: Any, lazy: bool = True) -> List[Any]:
        """Rows ``first[j] .. first[j] + width`` of each client ``clients[j]``'s order: ``[len(clients), width]``.

        Leaves are ``Batched`` values read where they are used (see ``gathered``) when ``lazy``.
        """
        clients = tf.cast(clients, tf.int64)
        at = tf.gather(self.starts, clients) + tf.cast(first, tf.int64)
        if not isinstance(width, int) and clients.shape.as_list() == [1]:
            # One client's rows of a size known only at run time: a slice, which XLA can bound.
            return self._gather(self.order[at[0] : at[0] + tf.cast(width, tf.int64)][None, :])
        rows = at[:, None] + tf.range(tf.cast(width, tf.int64))[None, :]
        # A client past its data (the masked path steps everyone) reads some valid row; its result is dropped.
        rows = tf.minimum(rows, tf.maximum(tf.size(self.order, out_type=tf.int64) - 1, 0))
        rows = tf.gather(self.order, rows)
        return [gathered(x, rows) for x in self.examples] if lazy else self._gather(rows)

    def stepper(self) -> Steps:
        if self.batch_size is None:
            return Steps(tf.reduce_max(tf.concat([self.lengths, [0]], 0)), self.lengths,
                         lambda s, clients: [x[:, 0] for x in self._rows(clients, s, 1, lazy=False)])
        b = self.batch_size
        full = self.counts // b

        def take(s, clients):
            return self._rows(clients, tf.cast(s, tf.int64) * b, b)

        num_steps = tf.reduce_max(tf.concat([full, [0]], 0))
        tail_sizes = self.counts - full * b
        elements = tails_of = None
        if self.contiguous:
            def run(first, count, width):
                first = tf.cast(first, tf.int64)
                rows = tf.cast(count, tf.int64) * tf.cast(width, tf.int64)
                shape = [count if isinstance(count, int) else tf.cast(count, tf.int32),
                         width if isinstance(width, int) else tf.cast(width, tf.int32)]
                return [tf.reshape(x[first : first + rows], shape + x.shape.as_list()[1:]) for x in self.examples]

            def elements(start, size):
                return run(tf.cast(start, tf.int64) * b, size, b)

            tails_start = tf.reduce_sum(full) * b  # the partial batches follow every full one

            def tails_of(before, r, k):
                return run(tails_start + tf.cast(before, tf.int64), k, r)

        if self.full_batches:
            return Steps(num_steps, full, take, elements=elements)

        def tail(clients, r):
            return self._rows(clients, tf.gather(full, tf.cast(clients, tf.int64)) * b, r)

        def padded_tails():
            clients = tf.where(tail_sizes > 0)[:, 0]
            sizes = tf.gather(tail_sizes, clients)
            first = tf.gather(self.starts, clients) + tf.gather(full, clients) * b
            j = tf.range(b, dtype=tf.int64)[None, :]
            rows = tf.gather(self.order, first[:, None] + tf.minimum(j, sizes[:, None] - 1))
            return self._gather(rows), j < sizes[:, None], tf.cast(clients, tf.int32)

        return Steps(num_steps, full, take, tail_sizes, tail, elements, tails_of, padded_tails)


__all__ = [
    "DEFAULT_CACHE",
    "Batched",
    "DatasetCache",
    "ClientSequences",
    "ShuffledData",
    "ShuffledSequences",
    "StaticData",
    "Shared",
    "Stacked",
    "client_elements",
    "gathered",
    "has_gpu",
    "materialize",
    "read",
    "tensors",
]

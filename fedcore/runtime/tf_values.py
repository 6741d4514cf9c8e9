"""How the TensorFlow backend holds values inside one compiled graph.

* unplaced and all-equal values: tensors, ``Struct``s of them, datasets;
* ``{T}@CLIENTS`` with tensor members: ``Stacked``, tensors with a leading
  clients axis;
* ``{T*}@CLIENTS``: ``ClientSequences``, every client's elements materialized
  once into flat tensors, from which the graph rebuilds a client's dataset
  (sequential strategy) or reads padded steps (vectorized strategy).
"""

from __future__ import annotations

import weakref
from typing import Any, List, Optional, Tuple

import attrs
import numpy as np
import tensorflow as tf

from fedcore.compiler import tf_bridge
from fedcore.runtime.datasets import sequence_elements
from fedcore.types import SequenceType, StructType, TensorType, Type


@attrs.frozen
class Stacked:
    """A clients value: ``value`` is a Struct/tensor whose leaves have a leading clients axis."""

    value: Any


@attrs.frozen
class Batched:
    """Inside a vectorized client function: a value with a leading clients axis."""

    value: Any


def leaf_types(t: Type) -> List[Type]:
    if isinstance(t, StructType):
        return [leaf for e in t for leaf in leaf_types(e)]
    return [t]


# --------------------------------------------------------------------------
# Client sequences.


@attrs.frozen
class SequenceData:
    """Host-side materialization of every client's sequence of one element type.

    ``rows[k]`` holds leaf k of all elements of all clients, concatenated on
    axis 0 (stacked when the leaf is a scalar); ``elem_splits[k]`` delimits the
    elements in it; ``client_splits`` delimits the clients in element space.
    ``dense`` is set when every element has the same shapes: per leaf a
    ``[clients, max_elements, ...]`` array padded with zeros, with ``lengths``.
    """

    element_type: Type
    rows: Tuple[np.ndarray, ...]
    elem_splits: Tuple[np.ndarray, ...]
    client_splits: np.ndarray
    dense: Optional[Tuple[np.ndarray, ...]]
    lengths: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.client_splits) - 1

    def signature_key(self) -> tuple:
        return (
            tuple((r.dtype.str, r.shape[1:]) for r in self.rows),
            None if self.dense is None else tuple(d.shape[1:] for d in self.dense),
        )

    def tensors(self) -> List[np.ndarray]:
        out = list(self.rows) + list(self.elem_splits) + [self.client_splits, self.lengths]
        if self.dense is not None:
            out.extend(self.dense)
        return out


def _leaf_array(value: Any, t: TensorType) -> np.ndarray:
    if t.dtype == "string":
        return np.asarray(value, dtype=object)
    return np.asarray(value, dtype=t.np_dtype)


_materialized: "weakref.WeakKeyDictionary[tf.data.Dataset, list]" = weakref.WeakKeyDictionary()


def _dataset_shuffles(ds: tf.data.Dataset) -> bool:
    """True if ``ds``'s pipeline holds a shuffle that reshuffles on every iteration."""
    seen = 0
    node = ds
    while node is not None and seen < 1000:
        if type(node).__name__ in ("_ShuffleDataset", "ShuffleDataset"):
            if getattr(node, "_reshuffle_each_iteration", True):
                return True
        inputs = getattr(node, "_inputs", None)
        if callable(inputs):
            try:
                parents = inputs()
            except Exception:  # noqa: BLE001 - an unknown dataset kind: assume it may shuffle
                return True
            node = parents[0] if parents else None
        else:
            node = getattr(node, "_input_dataset", None)
        seen += 1
    return False


def client_elements(seq: Any, element_type: Type) -> list:
    """A client's elements; finite datasets without reshuffling are read once and cached."""
    if isinstance(seq, tf.data.Dataset):
        if _dataset_shuffles(seq):
            return sequence_elements(seq, element_type)
        cached = _materialized.get(seq)
        if cached is None:
            cached = sequence_elements(seq, element_type)
            _materialized[seq] = cached
        return cached
    return list(seq)


def materialize(client_seqs: List[Any], element_type: Type) -> SequenceData:
    types = leaf_types(element_type)
    per_leaf: List[List[np.ndarray]] = [[] for _ in types]
    counts = []
    for seq in client_seqs:
        elements = client_elements(seq, element_type)
        counts.append(len(elements))
        for element in elements:
            for k, (leaf, t) in enumerate(zip(tf_bridge.flatten(element, element_type), types)):
                per_leaf[k].append(_leaf_array(leaf, t))
    rows, splits, dense = [], [], []
    uniform = True
    for k, t in enumerate(types):
        arrays = per_leaf[k]
        fixed_rank = t.shape if t.shape is not None else None
        empty_shape = tuple(0 if d is None else d for d in (fixed_rank or ()))
        if t.shape == () or (arrays and all(a.ndim == 0 for a in arrays)):
            rows.append(np.stack(arrays) if arrays else np.zeros((0,), t.np_dtype))
            splits.append(np.arange(len(arrays) + 1, dtype=np.int64))
        else:
            rows.append(np.concatenate(arrays, axis=0) if arrays else np.zeros(empty_shape, t.np_dtype))
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
    return SequenceData(element_type, tuple(rows), tuple(splits), client_splits, dense_arrays, counts_arr)


@attrs.frozen
class ClientSequences:
    """In-graph view of a SequenceData: tensors plus how to read them."""

    element_type: Type
    rows: Tuple[tf.Tensor, ...]
    elem_splits: Tuple[tf.Tensor, ...]
    client_splits: tf.Tensor
    lengths: tf.Tensor
    dense: Optional[Tuple[tf.Tensor, ...]]

    @classmethod
    def from_tensors(cls, element_type: Type, tensors: List[tf.Tensor], has_dense: bool) -> "ClientSequences":
        k = len(leaf_types(element_type))
        rows, splits = tuple(tensors[:k]), tuple(tensors[k : 2 * k])
        client_splits, lengths = tensors[2 * k], tensors[2 * k + 1]
        dense = tuple(tensors[2 * k + 2 : 3 * k + 2]) if has_dense else None
        return cls(element_type, rows, splits, client_splits, lengths, dense)

    def _element(self, e: tf.Tensor) -> Any:
        types = leaf_types(self.element_type)
        out = []
        for rows, splits, t in zip(self.rows, self.elem_splits, types):
            if t.shape == ():
                out.append(rows[e])
            else:
                out.append(rows[splits[e] : splits[e + 1]])
        return tf_bridge.to_dataset_structure(tf_bridge.unflatten(out, self.element_type), self.element_type)

    def dataset(self, client: tf.Tensor) -> tf.data.Dataset:
        """Client ``client``'s dataset, with the element structure its type asks for."""
        start, end = self.client_splits[client], self.client_splits[client + 1]
        return tf.data.Dataset.range(start, end).map(self._element)


def sequence_tensor_specs(data: SequenceData) -> List[tf.TensorSpec]:
    """Specs that leave data-dependent sizes open, so new data never retraces."""
    k = len(data.rows)
    specs = []
    for i, a in enumerate(data.tensors()):
        dtype = tf.string if a.dtype == object else tf.as_dtype(a.dtype)
        open_dims = 2 if i >= 2 * k + 2 else 1
        specs.append(tf.TensorSpec(shape=[None] * open_dims + list(a.shape[open_dims:]), dtype=dtype))
    return specs


__all__ = [
    "Batched",
    "ClientSequences",
    "SequenceData",
    "SequenceType",
    "Stacked",
    "materialize",
]

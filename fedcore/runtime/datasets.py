"""Sequences in canonical form: lists of elements or tf.data.Datasets."""

from __future__ import annotations

import functools
from typing import Any, List

import numpy as np
import tensorflow as tf

from fedcore.compiler import tf_bridge
from fedcore.structure import Struct, items_by_names
from fedcore.types import SequenceType, StructType, TensorType, Type


def canonical_element(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        items = items_by_names(value, t.names())
        return Struct([(n, canonical_element(v, e)) for (n, e), (_, v) in zip(t.elements, items)])
    if isinstance(t, TensorType) and t.dtype == "string":
        arr = np.asarray(value)
        if arr.ndim == 0:
            item = arr.item()
            return item.decode() if isinstance(item, bytes) else item
        return arr
    if isinstance(value, tf.data.Dataset):
        return value
    return np.asarray(value)


def dataset_elements(ds: tf.data.Dataset, element_type: Type) -> List[Any]:
    """All elements of ``ds`` in canonical form."""
    return [canonical_element(e, element_type) for e in ds.as_numpy_iterator()]


def sequence_elements(seq: Any, element_type: Type) -> List[Any]:
    """A canonical sequence (list or dataset) as a list of canonical elements."""
    if isinstance(seq, tf.data.Dataset):
        return dataset_elements(seq, element_type)
    return list(seq)


def _user_element(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return tf_bridge.build_container(
            tf_bridge.element_container(t), [(n, _user_element(v, e)) for (n, e), v in zip(t.elements, value)]
        )
    if isinstance(t, TensorType):
        if t.dtype == "string":
            return tf.constant(value, tf.string)
        return tf.constant(value, t.tf_dtype)
    return value


def make_dataset(seq: Any, element_type: Type) -> tf.data.Dataset:
    """A tf.data.Dataset for a canonical sequence, with element_spec(element_type)'s structure."""
    if isinstance(seq, tf.data.Dataset):
        return tf_bridge.conform_dataset(seq, element_type)
    spec = tf_bridge.element_spec(element_type)
    if not seq:
        return tf.data.Dataset.from_generator(lambda: iter(()), output_signature=spec)
    parts = [tf.data.Dataset.from_tensors(_user_element(e, element_type)) for e in seq]
    ds = functools.reduce(lambda a, b: a.concatenate(b), parts)
    return ds


def to_tf_leaves(value: Any, t: Type) -> List[Any]:
    """The flat tensors and datasets that a TF computation of parameter type ``t`` takes."""
    if isinstance(t, StructType):
        return [leaf for v, e in zip(value, t) for leaf in to_tf_leaves(v, e)]
    if isinstance(t, SequenceType):
        return [make_dataset(value, t.element)]
    if isinstance(t, TensorType):
        return [tf.convert_to_tensor(value, dtype=t.tf_dtype)]
    raise TypeError(f"cannot pass a value of type {t} to TensorFlow")


def from_tf_leaf(leaf: Any, t: Type) -> Any:
    """A tensor (or dataset) that TensorFlow returned, as a canonical value of type ``t``."""
    if not isinstance(t, TensorType):
        return leaf
    value = leaf.numpy() if hasattr(leaf, "numpy") else leaf
    if t.dtype == "string":
        if isinstance(value, bytes):
            return value.decode()
        return np.asarray(value, dtype=object)
    return np.asarray(value)

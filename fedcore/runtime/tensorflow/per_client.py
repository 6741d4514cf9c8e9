"""One client's sequence inside the sequential loop over clients.

In the sequential strategy, client ``i``'s dataset is a view of the cohort's
tensors, which were materialized once (``values.ClientSequences`` or
``values.ShuffledSequences``).  A ``sequence_reduce`` over it steps the
client's elements straight from those tensors in a ``tf.while_loop``; only
client work that needs a real ``tf.data.Dataset`` (a TF computation that
iterates its dataset itself, ``sequence_map``, ``sequence_sum``) gets one, built
as cheaply as the layout allows: ``from_tensor_slices`` over the client's
gathered examples, batched as its pipeline batches.

Either way the client sees the elements, in the order, that the cohort's
layout gives it (see docs/performance.md, "Which tf.data semantics are kept").
"""

from __future__ import annotations

from typing import Any, Callable, List

import tensorflow as tf

from fedcore.compiler import tf_bridge, tf_function
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.runtime.tensorflow.values import ClientSequences, ShuffledSequences
from fedcore.types import Type


class ClientSequence:
    """Client ``client``'s sequence: its elements are read from ``source``'s tensors on demand."""

    def __init__(self, source: Any, client: tf.Tensor):
        self.source = source
        self.client = client
        self.element_type: Type = source.element_type

    # -- elements ----------------------------------------------------------

    def num_elements(self) -> tf.Tensor:
        src, c = self.source, self.client
        if isinstance(src, ShuffledSequences):
            return tf.cast(src.lengths[tf.cast(c, src.lengths.dtype)], tf.int32)
        c = tf.cast(c, src.client_splits.dtype)
        return tf.cast(src.client_splits[c + 1] - src.client_splits[c], tf.int32)

    def element_leaves(self, s: tf.Tensor, full: bool = False) -> List[tf.Tensor]:
        """The flat leaves of the client's element ``s``; ``full``: a full batch, sliced at its static size."""
        src = self.source
        if isinstance(src, ShuffledSequences):
            c = tf.cast(self.client, src.counts.dtype)
            s = tf.cast(s, src.counts.dtype)
            if src.batch_size is None:
                return src._gather(src.order[src.starts[c] + s])
            b = src.batch_size
            start = src.starts[c] + s * b
            if full:  # a slice of static size: XLA needs it, and the step is traced at it
                return src._gather(tf.slice(src.order, tf.reshape(start, [1]), [b]))
            return src._gather(src.order[start: src.starts[c] + tf.minimum((s + 1) * b, src.counts[c])])
        e = src.client_splits[tf.cast(self.client, src.client_splits.dtype)] + tf.cast(s, src.client_splits.dtype)
        out = []
        for rows, splits, t in zip(src.rows, src.elem_splits, leaf_types(self.element_type)):
            out.append(rows[e] if t.shape == () else rows[splits[e]: splits[e + 1]])
        return out

    def reduce(self, zero_flat: List[tf.Tensor], invariants: List[tf.TensorShape],
               step: Callable[[List[tf.Tensor], List[tf.Tensor]], List[tf.Tensor]]) -> List[tf.Tensor]:
        """Folds ``step(acc_leaves, element_leaves)`` over the client's elements in order."""
        count = self.num_elements()
        invariants = [tf.TensorShape([])] + list(invariants)
        start = [tf.constant(0)] + list(zero_flat)
        src = self.source
        if isinstance(src, ShuffledSequences) and src.batch_size is not None:
            # Full batches first, their size static, so that client work is traced at it (``static_shapes``);
            # then the partial last batch, if any, at the declared type.
            b = src.batch_size
            full = tf.cast(src.counts[tf.cast(self.client, src.counts.dtype)] // b, tf.int32)

            def full_body(s, *acc):
                leaves = self.element_leaves(s, full=True)
                with tf_function.static_shapes():
                    return [s + 1] + list(step(list(acc), leaves))

            start = list(tf.while_loop(lambda s, *_: s < full, full_body, start, shape_invariants=invariants,
                                       parallel_iterations=1))

        def body(s, *acc):
            return [s + 1] + list(step(list(acc), self.element_leaves(s)))

        out = tf.while_loop(lambda s, *_: s < count, body, start, shape_invariants=invariants, parallel_iterations=1)
        return list(out[1:])

    # -- as a tf.data.Dataset ---------------------------------------------

    def dataset(self) -> tf.data.Dataset:
        """The client's elements as a tf.data.Dataset, built from the tensors already in the graph."""
        src, t = self.source, self.element_type
        if isinstance(src, ShuffledSequences):
            c = tf.cast(self.client, src.counts.dtype)
            examples = src._gather(src.order[src.starts[c]: src.starts[c] + src.counts[c]])
            ds = tf.data.Dataset.from_tensor_slices(_structure(examples, t))
            return ds if src.batch_size is None else ds.batch(src.batch_size)
        if src.dense is not None:  # every element has the same shapes: slice the padded layout
            c = tf.cast(self.client, src.lengths.dtype)
            leaves = [d[c, : src.lengths[c]] for d in src.dense]
            return tf.data.Dataset.from_tensor_slices(_structure(leaves, t))
        return src.dataset(self.client)


def _structure(leaves: List[tf.Tensor], element_type: Type) -> Any:
    """Stacked leaves (of elements, or of examples before batching) in the element type's structure."""
    return tf_bridge.to_dataset_structure(tf_bridge.unflatten(leaves, element_type), element_type)


def view(value: Any, client: tf.Tensor) -> Any:
    """Client ``client``'s view of a cohort's sequences."""
    return ClientSequence(value, client)


def as_dataset(value: Any) -> Any:
    """``value`` where TF code needs a tf.data.Dataset: a client's view becomes one."""
    return value.dataset() if isinstance(value, ClientSequence) else value


__all__ = ["ClientSequence", "as_dataset", "view"]

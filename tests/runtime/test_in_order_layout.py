"""Unshuffled batched cohorts are laid out so that runs of batches are slices (``values._in_order``).

Full batches come first, client after client; then the partial last batches,
by size; then what ``drop_remainder`` leaves out.  Every client here holds
its own values (client ``c``'s example ``i`` is ``1000 c + i``), and the
steps depend on which examples share a batch and in what order, so a batch
read from the wrong client or the wrong rows changes the result.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, values
from tests.runtime.folds import per_client_reduction

ELEMENT = fedcore.to_type((tf.float32, [None]))
SUMS = fedcore.to_type(collections.OrderedDict(weighted=tf.float32, squares=tf.float32, batches=tf.int32))


def datasets(sizes, batch, drop_remainder=False):
    return [tf.data.Dataset.range(n).map(lambda x, c=c: tf.cast(x + 1000 * c, tf.float32))
            .batch(batch, drop_remainder=drop_remainder) for c, n in enumerate(sizes)]


@fedcore.tf_computation(SUMS, ELEMENT)
def sums_step(state, batch):
    # Only adds (the one-pass path), but each increment depends on the batch's members and their order.
    position = tf.range(1, tf.size(batch) + 1, dtype=tf.float32)
    return collections.OrderedDict(weighted=state["weighted"] + tf.reduce_sum(batch * position) * 1e-3,
                                   squares=state["squares"] + tf.square(tf.reduce_sum(batch) * 1e-3),
                                   batches=state["batches"] + 1)


@fedcore.tf_computation(tf.float32, ELEMENT)
def folding_step(acc, batch):
    # Depends on the order of the batches: the per-client stepping path.
    return acc * 0.5 + tf.reduce_sum(batch * tf.range(1, tf.size(batch) + 1, dtype=tf.float32)) * 1e-3


ZERO = collections.OrderedDict(weighted=np.float32(0), squares=np.float32(0), batches=np.int32(0))


all_sums = per_client_reduction(sums_step, ZERO, ELEMENT)
all_folds = per_client_reduction(folding_step, np.float32(0), ELEMENT)


def run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


def check(sizes, batch, drop, strategy):
    data = datasets(sizes, batch, drop)
    expected = run(fedcore.ReferenceExecutor(), all_sums, data)
    got = run(TensorFlowExecutor(strategy=strategy), all_sums, data)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(float(g["weighted"]), float(e["weighted"]), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(g["squares"]), float(e["squares"]), rtol=1e-5, atol=1e-4)
        assert int(g["batches"]) == int(e["batches"])
    folds = run(TensorFlowExecutor(strategy=strategy), all_folds, data)
    np.testing.assert_allclose(np.asarray(folds, np.float64),
                               np.asarray(run(fedcore.ReferenceExecutor(), all_folds, data), np.float64),
                               rtol=1e-5, atol=1e-4)


def test_the_layout_is_the_one_for_unshuffled_batches():
    sizes, batch = [7, 0, 3, 12, 7, 5], 4
    data = values.materialize(datasets(sizes, batch), ELEMENT, cache=values.DatasetCache())
    assert isinstance(data, values.ShuffledData) and data.contiguous
    examples = np.asarray(data.examples[0])
    # Full batches first, client after client; then partial batches by size (3, 3, 1, 3 -> 1, 3, 3, 3).
    full = [1000 * c + i for c, n in enumerate(sizes) for i in range(n // batch * batch)]
    np.testing.assert_array_equal(examples[: len(full)], full)
    # Then the partial batches by size, and by client within a size: client 5's 1, then clients 0, 2, 4's 3.
    np.testing.assert_array_equal(examples[len(full):], [5004, 4, 5, 6, 2000, 2001, 2002, 4004, 4005, 4006])
    # ``order`` still gives every client's examples in their own order.
    order = np.asarray(data.order)
    np.testing.assert_array_equal(examples[order], [1000 * c + i for c, n in enumerate(sizes) for i in range(n)])


@pytest.mark.parametrize("strategy", ["vectorized", "auto", "sequential"])
@pytest.mark.parametrize("drop", [False, True])
def test_sizes_1_19_20_21_400_and_empty_clients(strategy, drop):
    check([1, 19, 20, 21, 400, 0, 0, 40, 3, 21, 19], 20, drop, strategy)


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(0, 45), min_size=1, max_size=9), batch=st.integers(1, 8), drop=st.booleans())
def test_vectorized_equals_the_reference_on_random_cohorts(sizes, batch, drop):
    check(sizes, batch, drop, "vectorized")

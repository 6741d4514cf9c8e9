"""The sequential loop traces client work again at the static size of full batches.

A client's full batches have the pipeline's batch size; TensorFlow code traced
with that size known computes less at run time (a recurrent layer's gradient
reduces its broadcasts at trace time).  The partial last batch still runs the
trace at the declared type.  A trace at static shapes that fails, or whose
result type differs, is not used: the declared trace runs, as before.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor
from tests.runtime.folds import per_client_reduction

ELEMENT = fedcore.to_type((tf.float32, [None]))
TRACED = []


@fedcore.tf_computation(tf.float32, ELEMENT)
def step(acc, batch):
    TRACED.append(batch.shape.as_list())
    position = tf.range(1, tf.size(batch) + 1, dtype=tf.float32)
    return acc * 0.5 + tf.reduce_sum(batch * position) * 1e-3


@fedcore.tf_computation(tf.float32, ELEMENT)
def refuses_static(acc, batch):
    if batch.shape[0] is not None:  # a trace at a static size fails: the declared one must serve
        raise ValueError("only traced with the batch size unknown")
    return acc + tf.reduce_sum(batch)


def _fold(fn):
    return per_client_reduction(fn, np.float32(0), ELEMENT)


def datasets(sizes, batch):
    return [tf.data.Dataset.range(n).map(lambda x, c=c: tf.cast(x + 1000 * c, tf.float32)).batch(batch)
            for c, n in enumerate(sizes)]


def run(executor, comp, data):
    with fedcore.execution_context(executor):
        return np.asarray(comp(data), np.float64)


def test_full_batches_run_a_trace_at_the_batch_size():
    comp = _fold(step)
    data = datasets([1, 19, 20, 21, 40, 0], 20)
    TRACED.clear()
    got = run(TensorFlowExecutor(strategy="sequential"), comp, data)
    assert TRACED == [[20]]  # one more trace, at the batch size; partial batches use the declared one
    np.testing.assert_allclose(got, run(fedcore.ReferenceExecutor(), comp, data), rtol=1e-5, atol=1e-4)


def test_a_function_that_cannot_be_traced_at_static_shapes_runs_its_declared_trace():
    comp = _fold(refuses_static)
    data = datasets([7, 20, 45], 10)
    got = run(TensorFlowExecutor(strategy="sequential"), comp, data)
    np.testing.assert_allclose(got, run(fedcore.ReferenceExecutor(), comp, data), rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), batch=st.integers(1, 9))
def test_sequential_equals_the_reference_on_random_cohorts(sizes, batch):
    comp = _fold(step)
    data = datasets(sizes, batch)
    got = run(TensorFlowExecutor(strategy="sequential"), comp, data)
    np.testing.assert_allclose(got, run(fedcore.ReferenceExecutor(), comp, data), rtol=1e-5, atol=1e-4)

"""Results depend on the call, never on what ran before it in the process."""

import collections

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.runtime.execution import execute
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.runtime.tensorflow import values as tf_values

ELEMENT = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.int32, [None])))
STATE = fedcore.to_type(collections.OrderedDict(w=(tf.float32, [2]), order=tf.int32))


@fedcore.tf_computation(STATE, ELEMENT)
def _step(state, batch):
    # Order-sensitive: the weights depend on the order of the batches, and ``order`` records it.
    w = state["w"] * 0.9 + tf.reduce_mean(batch["x"], axis=0)
    return collections.OrderedDict(w=w, order=state["order"] * 31 + tf.reduce_sum(batch["y"] * tf.range(1, tf.size(batch["y"]) + 1)))


@fedcore.tf_computation
def _start():
    return collections.OrderedDict(w=tf.zeros([2]), order=tf.constant(0))


@fedcore.federated_computation(fedcore.SequenceType(ELEMENT))
def _client(batches):
    return fedcore.sequence_reduce(batches, _start(), _step)


@fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
def _round(data):
    return fedcore.federated_map(_client, data)


def _examples(n, offset=0):
    return collections.OrderedDict(
        x=np.arange(offset, offset + 2 * n, dtype=np.float32).reshape(n, 2), y=np.arange(offset, offset + n, dtype=np.int32))


def _cohort(sizes, seed=7, offset=0):
    return [tf.data.Dataset.from_tensor_slices(_examples(n, offset)).repeat(2).shuffle(5, seed=seed).batch(3) for n in sizes]


def _static(sizes):
    return [tf.data.Dataset.from_tensor_slices(_examples(n)).batch(4) for n in sizes]


def _run(executor, data):
    return [(tuple(np.asarray(r["w"]).tolist()), int(r["order"])) for r in execute(_round, (data,), {}, executor=executor)]


def test_a_seeded_round_gives_the_same_result_whatever_ran_before():
    data = _cohort([6, 9, 4])
    first = _run(TensorFlowExecutor(strategy="vectorized"), data)
    # Other work in between: the same datasets read by other calls, passes at other epochs, other cohorts.
    executor = TensorFlowExecutor(strategy="vectorized")
    _run(executor, _cohort([5, 5], seed=8, offset=100))
    _run(executor, data[::-1])
    for epoch in range(3):
        tf_values.client_elements(data[0], ELEMENT, epoch=epoch)
    _run(TensorFlowExecutor(strategy="sequential"), data)
    again = _run(executor, data)
    rebuilt = _run(TensorFlowExecutor(strategy="vectorized"), _cohort([6, 9, 4]))  # new objects, same content
    assert again == first
    assert rebuilt == first


def test_the_same_calls_in_another_order_give_the_same_results():
    a, b, c = _cohort([6, 3]), _cohort([4, 8], seed=3), _static([5, 7])

    def results(order):
        executor = TensorFlowExecutor()
        return {name: _run(executor, data) for name, data in [(n, {"a": a, "b": b, "c": c}[n]) for n in order]}

    forward, backward = results("abc"), results("cba")
    assert forward == backward
    assert forward["a"] != forward["b"]


def test_the_dataset_cache_an_executor_owns_changes_no_result():
    data = _cohort([6, 9])
    shared = tf_values.materialize(data, ELEMENT)
    own = tf_values.materialize(data, ELEMENT, cache=tf_values.DatasetCache(max_datasets=0, max_cohorts=0))
    np.testing.assert_array_equal(shared.order, own.order)
    for x, y in zip(shared.tensors(), own.tensors()):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    later = tf_values.materialize(data, ELEMENT, epoch=1)
    assert not np.array_equal(later.order, shared.order)  # another epoch, another order

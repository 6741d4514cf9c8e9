"""Clients of very different sizes in one vectorized round: equal to the reference, step for step.

The vectorized strategy sorts clients by their number of full batches, runs
each step on the clients still going, and then runs the partial last
batches, one call per distinct size.  These tests pin that every client
still sees exactly its own batches, in order, including empty clients and
clients with only a partial batch.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, batched

ELEMENT = fedcore.to_type((tf.float32, [None]))
STATE = fedcore.to_type((tf.float32, [3]))


@fedcore.tf_computation(STATE, ELEMENT)
def order_sensitive_step(state, batch):
    # Depends on the order of batches and on each batch's size, not only on their sum.
    size = tf.cast(tf.size(batch), tf.float32)
    return tf.stack([state[0] * 0.5 + tf.reduce_sum(batch), state[1] + size, state[2] * 0.9 + size * size])


@fedcore.federated_computation(fedcore.SequenceType(ELEMENT))
def client_fold(batches):
    return fedcore.sequence_reduce(batches, np.zeros(3, np.float32), order_sensitive_step)


@fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
def fold_all(data):
    return fedcore.federated_map(client_fold, data)


def datasets(sizes, batch, repeat=1):
    return [tf.data.Dataset.range(n).map(lambda x: tf.cast(x, tf.float32) + 1.0).repeat(repeat).batch(batch)
            for n in sizes]


def run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


def reference(comp, *args):
    return run(fedcore.ReferenceExecutor(), comp, *args)


@pytest.fixture
def steps_pay(monkeypatch):
    """'auto' vectorizes training steps, as where TensorFlow's CPU kernels are oneDNN's (``batched_steps_pay``)."""
    monkeypatch.setattr(batched, "batched_steps_pay", lambda n: True)


@pytest.mark.parametrize("strategy", ["vectorized", "auto", "sequential"])
def test_sizes_1_19_20_21_400_and_empty_clients_in_one_round(strategy, steps_pay):
    data = datasets([1, 19, 20, 21, 400, 0, 0, 40, 3], batch=20)
    executor = TensorFlowExecutor(strategy=strategy)
    got = run(executor, fold_all, data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(fold_all, data)), rtol=1e-5)
    if strategy != "sequential":
        assert [c.strategy for c in executor.strategy_report] == ["vectorized"]


@pytest.mark.parametrize("onednn, clients, expected, why", [
    (False, 8, "sequential", "oneDNN off"),
    (False, 64, "sequential", "oneDNN off"),
    (True, 8, "sequential", "fewer than 64 clients (8 here)"),
    (True, 64, "vectorized", None),
])
def test_auto_runs_training_steps_where_they_pay_and_says_why_not_elsewhere(monkeypatch, onednn, clients, expected, why):
    monkeypatch.setattr(batched, "has_gpu", lambda: False)
    monkeypatch.setattr(batched, "onednn_on", lambda: onednn)
    sizes = [1, 19, 20, 21, 400, 0, 40, 3]
    data = datasets((sizes * clients)[:clients], batch=20)
    auto, forced = TensorFlowExecutor(strategy="auto"), TensorFlowExecutor(strategy="vectorized")
    expected_values = np.asarray(reference(fold_all, data))
    np.testing.assert_allclose(np.asarray(run(auto, fold_all, data)), expected_values, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(run(forced, fold_all, data)), expected_values, rtol=1e-5)
    (choice,) = auto.strategy_report
    assert choice.strategy == expected
    if why is not None:
        assert "carry state from batch to batch" in choice.reason and why in choice.reason, choice.reason
    assert [c.strategy for c in forced.strategy_report] == ["vectorized"]  # forced, it always vectorizes


def test_every_client_empty():
    data = datasets([0, 0, 0], batch=4)
    got = run(TensorFlowExecutor(strategy="vectorized"), fold_all, data)
    np.testing.assert_array_equal(np.asarray(got), np.zeros((3, 3), np.float32))


def test_one_client():
    data = datasets([23], batch=5)
    got = run(TensorFlowExecutor(strategy="vectorized"), fold_all, data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(fold_all, data)), rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 45), min_size=1, max_size=7),
    batch=st.integers(1, 8),
    repeat=st.integers(1, 3),
)
def test_vectorized_equals_reference_on_random_ragged_cohorts(sizes, batch, repeat):
    data = datasets(sizes, batch, repeat)
    got = run(TensorFlowExecutor(strategy="vectorized"), fold_all, data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(fold_all, data)), rtol=1e-5)


def test_a_second_round_with_other_sizes_reuses_the_program():
    executor = TensorFlowExecutor(strategy="vectorized")
    for sizes in ([5, 17, 0], [40, 1, 9]):
        data = datasets(sizes, batch=4)
        np.testing.assert_allclose(np.asarray(run(executor, fold_all, data)),
                                   np.asarray(reference(fold_all, data)), rtol=1e-5)
    assert executor.trace_count == 1


# A step that reads another clients-axis value (the client's own model) from around it.
MODEL = fedcore.to_type((tf.float32, [3]))


@fedcore.tf_computation(STATE, ELEMENT, MODEL)
def scaled_step(state, batch, model):
    return order_sensitive_step(state, batch) * model


@fedcore.federated_computation(MODEL, fedcore.SequenceType(ELEMENT))
def client_with_capture(model, batches):
    @fedcore.federated_computation(STATE, ELEMENT)
    def step(state, batch):
        return scaled_step(state, batch, model)

    return fedcore.sequence_reduce(batches, np.zeros(3, np.float32), step)


@fedcore.federated_computation(fedcore.type_at_clients(MODEL), fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
def fold_with_capture(models, data):
    return fedcore.federated_map(client_with_capture, fedcore.federated_zip([models, data]))


@pytest.mark.parametrize("strategy,sizes", [
    ("vectorized", [4, 32, 0, 12, 8]),  # full batches only: all clients step together, masked once done
    ("auto", [3, 30, 0, 12, 7]),  # the partial batches need the step per client: auto runs it sequentially
])
def test_a_step_that_captures_client_values_sees_its_own_client(strategy, sizes):
    # Every client has its own model, so a step given another client's model would be visible.
    models = [np.full(3, 1.0 + 0.1 * i, np.float32) for i in range(len(sizes))]
    data = datasets(sizes, batch=4)
    got = run(TensorFlowExecutor(strategy=strategy), fold_with_capture, models, data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(fold_with_capture, models, data)), rtol=1e-5)


# Real training: per-client SGD on a Dense model with ragged client sizes and shuffled data.
BATCH = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 6]), y=(tf.int32, [None])))
WEIGHTS = fedcore.to_type(collections.OrderedDict(kernel=(tf.float32, [6, 3]), bias=(tf.float32, [3])))


@fedcore.tf_computation(WEIGHTS, BATCH)
def sgd_step(w, batch):
    with tf.GradientTape() as tape:
        tape.watch([w["kernel"], w["bias"]])
        logits = tf.matmul(batch["x"], w["kernel"]) + w["bias"]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["y"], logits))
    gk, gb = tape.gradient(loss, [w["kernel"], w["bias"]])
    return collections.OrderedDict(kernel=w["kernel"] - 0.3 * gk, bias=w["bias"] - 0.3 * gb)


@fedcore.federated_computation(WEIGHTS, fedcore.SequenceType(BATCH))
def local_training(w, data):
    return fedcore.sequence_reduce(data, w, sgd_step)


@fedcore.federated_computation(fedcore.type_at_server(WEIGHTS), fedcore.type_at_clients(fedcore.SequenceType(BATCH)))
def train_round(w, data):
    return fedcore.federated_mean(fedcore.federated_map(local_training, fedcore.federated_zip([fedcore.federated_broadcast(w), data])))


def client_data(sizes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        examples = collections.OrderedDict(x=rng.normal(size=(n, 6)).astype(np.float32),
                                           y=rng.integers(0, 3, n).astype(np.int32))
        out.append(tf.data.Dataset.from_tensor_slices(examples).repeat(2).batch(5))
    return out


def test_ragged_sgd_round_equals_reference():
    w = collections.OrderedDict(kernel=np.zeros((6, 3), np.float32), bias=np.zeros(3, np.float32))
    sizes = [1, 9, 10, 11, 200, 0, 4]
    data = client_data(sizes)
    expected = reference(train_round, w, data)
    for strategy in ("vectorized", "sequential"):
        got = run(TensorFlowExecutor(strategy=strategy), train_round, w, data)
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6)


# An evaluation-shaped reduction: the model rides in the state unchanged; only the metrics change.
EVAL_STATE = fedcore.to_type(collections.OrderedDict(model=WEIGHTS, loss=tf.float32, count=tf.int32))


@fedcore.tf_computation(EVAL_STATE, BATCH)
def eval_step(state, batch):
    w = state["model"]
    logits = tf.matmul(batch["x"], w["kernel"]) + w["bias"]
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["y"], logits))
    return collections.OrderedDict(model=w, loss=state["loss"] + loss, count=state["count"] + tf.size(batch["y"]))


@fedcore.tf_computation(EVAL_STATE, BATCH)
def swapping_step(state, batch):
    # Returns parameter leaves, but not each in its own place: nothing may be kept out of the loop.
    w = state["model"]
    kernel = tf.concat([w["kernel"][:, 1:], w["kernel"][:, :1]], 1)
    return collections.OrderedDict(model=collections.OrderedDict(kernel=kernel, bias=w["bias"]),
                                   loss=state["loss"] + tf.reduce_sum(tf.matmul(batch["x"], w["kernel"])),
                                   count=state["count"] + tf.size(batch["y"]))


@fedcore.tf_computation(WEIGHTS)
def eval_start(w):
    return collections.OrderedDict(model=w, loss=tf.constant(0.0), count=tf.constant(0))


def _evaluation(step):
    @fedcore.federated_computation(WEIGHTS, fedcore.SequenceType(BATCH))
    def client(w, data):
        return fedcore.sequence_reduce(data, eval_start(w), step)

    @fedcore.federated_computation(fedcore.type_at_server(WEIGHTS), fedcore.type_at_clients(fedcore.SequenceType(BATCH)))
    def evaluation(w, data):
        return fedcore.federated_map(client, fedcore.federated_zip([fedcore.federated_broadcast(w), data]))

    return evaluation


@pytest.mark.parametrize("step", [eval_step, swapping_step], ids=["model-unchanged", "leaves-swapped"])
def test_evaluation_shaped_reduction_equals_reference(step):
    rng = np.random.default_rng(1)
    w = collections.OrderedDict(kernel=rng.normal(size=(6, 3)).astype(np.float32), bias=np.ones(3, np.float32))
    data = client_data([1, 9, 10, 11, 60, 0, 4], seed=2)
    comp = _evaluation(step)
    expected = reference(comp, w, data)
    got = run(TensorFlowExecutor(strategy="vectorized"), comp, w, data)
    assert len(got) == len(expected) == 7
    for g, e in zip(got, expected):
        for name in ("loss", "count"):
            np.testing.assert_allclose(np.asarray(g[name]), np.asarray(e[name]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(g["model"]["kernel"]), np.asarray(e["model"]["kernel"]), rtol=1e-6)


def test_passthrough_names_only_leaves_returned_unchanged():
    assert eval_step.ir.function.passthrough == (0, 1, None, None)
    assert swapping_step.ir.function.passthrough[1:] == (1, None, None)  # bias stays; the kernel is new
    assert sgd_step.ir.function.passthrough == (None, None)


@fedcore.tf_computation(STATE, ELEMENT)
def checked_step(state, batch):
    # Returns its state unchanged, but only after checking the batch: the check must run.
    with tf.control_dependencies([tf.debugging.assert_non_negative(batch, message="a negative example")]):
        return tf.identity(state)


@pytest.mark.parametrize("strategy", ["vectorized", "auto", "sequential"])
def test_a_step_that_returns_its_state_unchanged_still_runs_its_checks(strategy):
    @fedcore.federated_computation(fedcore.SequenceType(ELEMENT))
    def client(batches):
        return fedcore.sequence_reduce(batches, np.zeros(3, np.float32), checked_step)

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
    def check(data):
        return fedcore.federated_map(client, data)

    good = datasets([3, 5], batch=2)
    bad = [tf.data.Dataset.from_tensor_slices(np.array([1.0, -1.0], np.float32)).batch(2)] + datasets([4], batch=2)
    executor = TensorFlowExecutor(strategy=strategy)
    np.testing.assert_array_equal(np.asarray(run(executor, check, good)), np.zeros((2, 3), np.float32))
    with pytest.raises(fedcore.ExecutionError, match="a negative example"):
        run(executor, check, bad)

"""The default executor: the TF executor, with a per-computation fallback to the reference interpreter."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.runtime import FallbackExecutor
from fedcore.runtime.executor import ExecutionError, Unsupported
from fedcore.runtime.tensorflow import TensorFlowExecutor

C = fedcore.type_at_clients


@pytest.fixture
def default():
    """A fresh built-in default executor for the test; the previous default afterwards."""
    before = fedcore.get_default_executor()
    fedcore.set_default_executor(None)
    yield fedcore.get_default_executor()
    fedcore.set_default_executor(before)


class Spy:
    """Wraps an executor, counting its calls (``prepare`` when it has one)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.prepared = 0
        self.executed = 0

    def prepare(self, comp, argument, num_clients=None):
        self.prepared += 1
        return self.inner.prepare(comp, argument, num_clients)

    def execute(self, comp, argument, num_clients=None):
        self.executed += 1
        return self.inner.execute(comp, argument, num_clients=num_clients)


@fedcore.federated_computation
def hello_world():
    return "Hello, World!"


@fedcore.tf_computation(fedcore.to_type("float32[?]"))
def total(v):
    return tf.reduce_sum(v)


@fedcore.federated_computation(C(fedcore.to_type("float32[?]")))
def client_totals(xs):
    return fedcore.federated_map(total, xs)


@fedcore.federated_computation(C(tf.float32))
def average(xs):
    return fedcore.federated_mean(xs)


RAGGED = [np.array([1.0], np.float32), np.array([1.0, 2.0], np.float32)]  # unequal shapes: the TF executor refuses


def test_the_default_is_the_tf_executor_with_the_reference_behind_it(default):
    assert isinstance(default, FallbackExecutor)
    assert isinstance(default.primary, TensorFlowExecutor)
    assert isinstance(default.fallback, fedcore.ReferenceExecutor)
    assert fedcore.runtime.current_executor() is default
    assert average([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert default.runs == {"tensorflow": 1}
    assert default.primary.trace_count == 1


def test_hello_world_runs(default):
    assert hello_world() == "Hello, World!"
    assert sum(default.runs.values()) == 1


def test_what_the_tf_executor_cannot_run_falls_back_once_with_one_debug_log(default, caplog):
    spy = Spy(default.primary)
    executor = FallbackExecutor(spy, default.fallback)
    with caplog.at_level(logging.DEBUG, logger="fedcore"), fedcore.execution_context(executor):
        assert client_totals(RAGGED) == [1.0, 3.0]
        assert client_totals(RAGGED) == [1.0, 3.0]
        # Decided once for the computation: even an argument the TF executor could take stays on the reference.
        assert client_totals([np.array([2.0], np.float32)] * 2) == [2.0, 2.0]
        assert average([1.0, 3.0]) == 2.0
    assert spy.prepared == 2  # client_totals once, average once
    assert executor.runs == {"reference": 3, "tensorflow": 1}
    assert "equal shapes across clients" in executor.fallback_reason(client_totals)
    assert executor.fallback_reason(average) is None
    records = [r for r in caplog.records if r.name == "fedcore"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    message = records[0].getMessage()
    assert "client_totals" in message and "reference" in message and "{float32[?]}@CLIENTS" in message


def test_client_work_returning_datasets_falls_back():
    @fedcore.tf_computation(tf.int32)
    def count_to(n):
        return tf.data.Dataset.range(tf.cast(n, tf.int64))

    @fedcore.federated_computation(C(tf.int32))
    def ranges(ns):
        return fedcore.federated_map(count_to, ns)

    executor = FallbackExecutor()
    with fedcore.execution_context(executor):
        assert ranges([1, 2]) == [[0], [0, 1]]
    assert executor.runs == {"reference": 1}
    assert "int64*" in executor.fallback_reason(ranges)


def test_argument_errors_are_not_swallowed(default):
    with pytest.raises(fedcore.ArgumentError, match="float32"):
        average(["not a number"])
    assert not default.runs


def test_execution_errors_from_bad_data_are_not_swallowed_nor_retried(default):
    @fedcore.federated_computation(C(tf.int32))
    def secure_total(xs):
        return fedcore.federated_secure_sum(xs, 5)

    fallback = Spy(fedcore.ReferenceExecutor())
    executor = FallbackExecutor(default.primary, fallback)
    with fedcore.execution_context(executor):
        with pytest.raises(ExecutionError):
            secure_total([1, 99])  # out of range: the run fails, in the TF executor
        assert secure_total([1, 2]) == 3
    assert fallback.executed == 0
    assert executor.runs == {"tensorflow": 2}
    assert executor.fallback_reason(secure_total) is None


def test_a_failing_tf_op_is_the_users_error(default):
    @fedcore.tf_computation(tf.float32)
    def checked(x):
        with tf.control_dependencies([tf.debugging.assert_positive(x, message="x must be positive")]):
            return tf.identity(x)

    @fedcore.federated_computation(C(tf.float32))
    def check_all(xs):
        return fedcore.federated_map(checked, xs)

    with pytest.raises(ExecutionError, match="x must be positive"):
        check_all([1.0, -1.0])
    assert default.runs == {"tensorflow": 1}


class RefusesAfterRunning:
    """A primary executor that breaks its contract: it runs, then says Unsupported."""

    name = "broken"

    def __init__(self):
        self.ran = 0

    def prepare(self, comp, argument, num_clients=None):
        def run():
            self.ran += 1
            raise Unsupported("too late")

        return run


def test_unsupported_after_the_program_started_is_not_retried():
    primary, fallback = RefusesAfterRunning(), Spy(fedcore.ReferenceExecutor())
    with fedcore.execution_context(FallbackExecutor(primary, fallback)):
        with pytest.raises(Unsupported, match="too late"):
            average([1.0])
    assert primary.ran == 1 and fallback.executed == 0


def test_the_reference_is_one_call_away(default):
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        assert average([1.0, 2.0]) == 1.5
    assert not default.runs
    fedcore.set_default_executor(fedcore.ReferenceExecutor())
    assert isinstance(fedcore.get_default_executor(), fedcore.ReferenceExecutor)
    assert hello_world() == "Hello, World!"
    assert not default.runs


def test_bad_configurations_are_refused():
    with pytest.raises(TypeError, match="prepare"):
        FallbackExecutor(fedcore.ReferenceExecutor())
    with pytest.raises(TypeError, match="execute"):
        FallbackExecutor(TensorFlowExecutor(), object())
    with pytest.raises(ValueError, match="num_clients"):
        FallbackExecutor(num_clients=-1)


def test_num_clients_reaches_both_executors():
    @fedcore.federated_computation
    def count():
        return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))

    executor = FallbackExecutor(num_clients=4)
    with fedcore.execution_context(executor):
        assert count() == 4
    assert executor.runs == {"tensorflow": 1}
    assert FallbackExecutor(num_clients=4).fallback.num_clients == 4


def _tiny_model_fn():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    spec = {"x": tf.TensorSpec([None, 3], tf.float32), "y": tf.TensorSpec([None], tf.int32)}
    return learning.from_keras_model(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True), spec)


def _client_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(4)


def test_fedavg_next_runs_on_the_tf_executor_by_default(default):
    process = learning.build_federated_averaging_process(
        _tiny_model_fn, client_optimizer_fn=lambda: keras.optimizers.SGD(0.1)
    )
    state = process.initialize()
    data = [_client_data(0), _client_data(1)]
    state, metrics = process.next(state, data)
    assert default.runs.get("reference", 0) == 0
    assert default.runs["tensorflow"] == 2  # initialize and next
    assert default.primary.trace_count == 2
    assert np.isfinite(float(metrics["loss"]))
    # tests/learning/test_federated_averaging.py checks that the two executors agree on FedAvg rounds.

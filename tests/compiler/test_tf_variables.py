"""tf.Variables, Keras models and Keras optimizers created inside a tf_computation.

Each call creates and initialises them anew (as in TFF): the computation stays
a pure function of its arguments on every executor, in serialization and in
the deployment forms.
"""

import collections

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import forms
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.testing import conformance
from tests.compiler.form_drivers import run_map_reduce_form

OD = collections.OrderedDict
ELEMENT = OD(x=fedcore.TensorType(tf.float32, [None, 3]), y=fedcore.TensorType(tf.float32, [None, 1]))
DATASET = fedcore.SequenceType(ELEMENT)


def model_fn():
    return tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1, kernel_initializer="zeros")])


@fedcore.tf_computation
def server_init():
    return model_fn().trainable_variables


WEIGHTS = server_init.type_signature.result


def client_update(model, dataset, server_weights, optimizer):
    """TFF's client update, word for word in its structure: assign, then a GradientTape loop over batches."""
    weights = model.trainable_variables
    tf.nest.map_structure(lambda v, w: v.assign(w), weights, list(server_weights))
    for batch in dataset:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    return [tf.identity(v) for v in weights]


def make_client_update_fn(make_optimizer, nested=False):
    update = tf.function(client_update) if nested else client_update

    @fedcore.tf_computation(DATASET, WEIGHTS)
    def client_update_fn(dataset, server_weights):
        return update(model_fn(), dataset, server_weights, make_optimizer())

    return client_update_fn


def sgd():
    return tf.keras.optimizers.SGD(0.05)


def adam():
    return tf.keras.optimizers.Adam(0.05)


def client_data(seed, n=6):
    r = np.random.RandomState(seed)
    x = r.randn(n, 3).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.25
    return tf.data.Dataset.from_tensor_slices(OD(x=x, y=y)).batch(4)


W0 = [np.array([[0.1], [0.2], [-0.1]], np.float32), np.array([0.3], np.float32)]


def eager_training(make_optimizer, dataset, weights):
    """The same training in plain eager Keras, with no fedcore involved: the independent answer."""
    model = model_fn()
    optimizer = make_optimizer()
    for v, w in zip(model.trainable_variables, weights):
        v.assign(w)
    for batch in dataset:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return [v.numpy() for v in model.trainable_variables]


def assert_weights_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Called directly.


def test_a_variable_initialised_from_a_parameter_is_fresh_in_every_call():
    @fedcore.tf_computation(tf.float32)
    def grow(x):
        v = tf.Variable(x)
        v.assign_add(1.0)
        v.assign(v * 3.0)
        return v.read_value()

    assert [grow(2.0), grow(2.0), grow(-1.0)] == [9.0, 9.0, 0.0]
    fn = grow.ir.function
    assert fn.creates_variables and not fn.writes_variables and fn.variables == ()


def test_a_keras_model_built_in_server_init_gives_its_initial_weights():
    @fedcore.tf_computation
    def init():
        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, kernel_initializer="ones",
                                                                                   bias_initializer="zeros")])
        return model.trainable_variables

    assert str(init.type_signature) == "( -> <float32[3,2],float32[2]>)"
    first, second = init(), init()
    assert_weights_close(first, [np.ones((3, 2), np.float32), np.zeros(2, np.float32)])
    assert_weights_close(second, first)


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "nested_tf_function"])
@pytest.mark.parametrize("make_optimizer", [sgd, adam], ids=["sgd", "adam"])
def test_tff_style_client_update_matches_eager_keras_and_is_pure(make_optimizer, nested):
    update = make_client_update_fn(make_optimizer, nested)
    expected = eager_training(make_optimizer, client_data(0), W0)
    first = update(client_data(0), W0)
    second = update(client_data(0), W0)  # Adam's step count and moments start again from zero
    assert_weights_close(first, expected)
    assert_weights_close(second, expected)
    assert not np.allclose(first[0], W0[0])  # it did train


def test_variables_a_computation_captures_keep_their_state():
    counter = tf.Variable(0.0)  # created outside: TF's meaning, a persistent variable

    @fedcore.tf_computation(tf.float32)
    def bump(x):
        own = tf.Variable(x)
        counter.assign_add(own)
        return counter.read_value()

    assert [bump(1.0), bump(2.0)] == [1.0, 3.0]
    fn = bump.ir.function
    assert fn.writes_variables and fn.creates_variables and len(fn.variables) == 1


# --------------------------------------------------------------------------
# Inside federated computations, on every executor.


def federated_round(update):
    @fedcore.federated_computation(fedcore.type_at_server(WEIGHTS), fedcore.type_at_clients(DATASET))
    def round_(weights, data):
        new = fedcore.federated_map(update, fedcore.federated_zip((data, fedcore.federated_broadcast(weights))))
        return fedcore.federated_mean(new)

    return round_


@pytest.fixture(scope="module")
def adam_round():
    return federated_round(make_client_update_fn(adam, nested=True))


def test_the_executors_agree_with_eager_keras(adam_round):
    # (The Ray executor runs the conformance case round_keras_model_and_optimizer_in_client_work.)
    seeds = [1, 2, 3]
    expected = [np.mean(ws, axis=0) for ws in zip(*[eager_training(adam, client_data(s), W0) for s in seeds])]
    for executor in (fedcore.ReferenceExecutor(), TensorFlowExecutor()):
        with fedcore.execution_context(executor):
            assert_weights_close(adam_round(W0, [client_data(s) for s in seeds]), expected)
            # A second round from the same state gives the same weights: nothing carried over.
            assert_weights_close(adam_round(W0, [client_data(s) for s in seeds]), expected)


def test_the_strategy_report_says_why_client_work_runs_sequentially(adam_round):
    executor = TensorFlowExecutor()
    with fedcore.execution_context(executor):
        adam_round(W0, [client_data(1), client_data(2)])
    (choice,) = executor.strategy_report
    assert choice.strategy == "sequential"
    assert str(choice) == ("federated_mean_of_map(client_update_fn): sequential: "
                           "client_update_fn creates tf.Variables and takes a dataset")


def test_vectorized_strategy_names_variable_creation():
    @fedcore.tf_computation(tf.float32)
    def scaled(x):
        v = tf.Variable(x)
        v.assign(v * 2.0)
        return v.read_value()

    @fedcore.tf_computation(tf.float32)
    def doubled(x):
        return x * 2.0

    def each(fn):
        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def each_(xs):
            return fedcore.federated_map(fn, xs)

        return each_

    auto = TensorFlowExecutor()
    with fedcore.execution_context(auto):
        assert each(scaled)([1.0, 2.0, 3.0]) == [2.0, 4.0, 6.0]
        assert [str(c) for c in auto.strategy_report] == ["federated_map(scaled): sequential: scaled creates tf.Variables"]
        assert each(doubled)([1.0, 2.0]) == [2.0, 4.0]
        assert [c.strategy for c in auto.strategy_report] == ["vectorized"]
    with fedcore.execution_context(TensorFlowExecutor(strategy="vectorized")):
        with pytest.raises(fedcore.ExecutionError, match="scaled creates tf.Variables"):
            each(scaled)([1.0, 2.0])


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=7))
def test_clients_in_parallel_never_share_a_variable(xs):
    # Each client's variable is its own, even with the loop's iterations running in parallel.
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def each(values):
        return fedcore.federated_map(_accumulate, values)

    with fedcore.execution_context(TensorFlowExecutor(strategy="sequential")):
        got = each(xs)
    expected = [np.float32(np.float32(x) * 4.0 + 3.0) for x in xs]
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=1e-6)


@fedcore.tf_computation(tf.float32)
def _accumulate(x):
    v = tf.Variable(x)
    for _ in range(3):
        v.assign_add(v.read_value() * 0.0 + x)  # three times: 4x
    v.assign_add(3.0)
    return v.read_value()


# --------------------------------------------------------------------------
# Serialization and deployment forms.


def test_serialized_and_deserialized_round_gives_the_same_weights(adam_round):
    data = [client_data(5), client_data(6)]
    back = fedcore.deserialize(fedcore.serialize(adam_round))
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        expected = adam_round(W0, data)
        assert_weights_close(back(W0, data), expected)
    with fedcore.execution_context(TensorFlowExecutor()):
        assert_weights_close(back(W0, [client_data(5), client_data(6)]), expected)

    update = make_client_update_fn(sgd)
    imported = fedcore.deserialize(fedcore.serialize(update))
    assert imported.ir.function.creates_variables and not imported.ir.function.writes_variables
    assert imported.ir.function.fingerprint == update.ir.function.fingerprint
    assert_weights_close(imported(client_data(0), W0), eager_training(sgd, client_data(0), W0))


def test_map_reduce_form_of_a_keras_round():
    @fedcore.tf_computation(WEIGHTS, WEIGHTS)
    def server_update(weights, mean):
        model = model_fn()
        for v, w in zip(model.trainable_variables, weights):
            v.assign(w)
        return [v * 0.5 + m * 0.5 for v, m in zip(model.trainable_variables, mean)]

    update = make_client_update_fn(sgd)

    @fedcore.federated_computation(fedcore.type_at_server(WEIGHTS), fedcore.type_at_clients(DATASET))
    def round_(weights, data):
        new = fedcore.federated_map(update, fedcore.federated_zip((data, fedcore.federated_broadcast(weights))))
        mean = fedcore.federated_mean(new)
        return fedcore.federated_map(server_update, fedcore.federated_zip((weights, mean))), mean

    form = forms.to_map_reduce_form(round_)
    with fedcore.execution_context(TensorFlowExecutor()):
        expected = round_(W0, [client_data(7), client_data(8)])
        actual = run_map_reduce_form(form, W0, [client_data(7), client_data(8)])
    conformance.assert_values_equal(actual, expected, rtol=1e-5, atol=1e-6)
    mean = [np.mean(ws, axis=0) for ws in zip(*[eager_training(sgd, client_data(s), W0) for s in (7, 8)])]
    assert_weights_close(expected[1], mean)
    assert_weights_close(expected[0], [0.5 * w + 0.5 * m for w, m in zip(W0, mean)])


# --------------------------------------------------------------------------
# What still cannot work says why, in plain words.


def test_a_variable_made_from_a_value_computed_in_a_loop_is_refused_plainly():
    with pytest.raises(TypeError) as info:
        @fedcore.tf_computation(fedcore.SequenceType(tf.float32))
        def per_element(ds):
            total = tf.constant(0.0)
            for x in ds:
                total += tf.Variable(x).read_value()
            return total

    message = str(info.value)
    assert "tf_computation per_element creates tf.Variable 'Variable' inside a tf.function, loop" in message
    assert "its initial value must be computable when the computation starts" in message
    assert "test_tf_variables.py" in message  # the user's line
    for raw in ("Unliftable", "singleton", "StagingError", "in user code"):
        assert raw not in message



def test_a_shared_tf_function_that_created_variables_for_another_computation_is_refused_plainly():
    @tf.function
    def counter_from(x):
        v = tf.Variable(lambda: tf.constant(1.0))
        v.assign_add(x)
        return v.read_value()

    @fedcore.tf_computation(tf.float32)
    def first(x):
        return counter_from(x)

    assert [first(1.0), first(1.0)] == [2.0, 2.0]
    with pytest.raises(TypeError, match="reuses that trace, whose variables belong to the other computation"):
        @fedcore.tf_computation(tf.float32)
        def second(x):
            return counter_from(x) * 2.0

        second(1.0)  # not reached: refused when traced

"""Functional optimizers: the same steps as Keras' (SGD, Adam, Adagrad), Yogi by its formula, state types."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.learning import optimizers

RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(3, 2)).astype(np.float32)
GRADS = [RNG.normal(size=(3, 2)).astype(np.float32) for _ in range(5)]


def run_functional(optimizer, w0=W0, grads=GRADS):
    weights = collections.OrderedDict(w=tf.constant(w0))
    state = optimizer.initialize(weights)
    for g in grads:
        state, weights = optimizer.apply(state, weights, collections.OrderedDict(w=tf.constant(g)))
    return weights["w"].numpy(), state


def run_keras(optimizer, w0=W0, grads=GRADS):
    variable = keras.Variable(w0)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])
    return np.asarray(variable.numpy())


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: optimizers.SGD(0.1), lambda: keras.optimizers.SGD(0.1)),
        (lambda: optimizers.SGD(0.1, momentum=0.9), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
        (
            lambda: optimizers.SGD(0.1, momentum=0.5, nesterov=True),
            lambda: keras.optimizers.SGD(0.1, momentum=0.5, nesterov=True),
        ),
        (lambda: optimizers.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
        (lambda: optimizers.Adagrad(0.1), lambda: keras.optimizers.Adagrad(0.1)),
    ],
    ids=["sgd", "momentum", "nesterov", "adam", "adagrad"],
)
def test_same_steps_as_keras(ours, theirs):
    got, state = run_functional(ours())
    np.testing.assert_allclose(got, run_keras(theirs()), rtol=1e-5, atol=1e-6)
    assert int(state[0]) == len(GRADS)


@pytest.mark.parametrize("kind", ["SGD", "Adam", "Adagrad"])
def test_from_keras_takes_the_configuration(kind):
    keras_optimizer = getattr(keras.optimizers, kind)(learning_rate=0.05)
    ours = optimizers.from_keras(keras_optimizer)
    assert type(ours).__name__ == kind
    np.testing.assert_allclose(run_functional(ours)[0], run_keras(getattr(keras.optimizers, kind)(0.05)), rtol=1e-5, atol=1e-6)


def test_yogi_follows_its_update_rule():
    lr, b1, b2, eps, v0 = 0.01, 0.9, 0.99, 1e-3, 1e-6
    w = W0.astype(np.float64)
    m = np.zeros_like(w)
    v = np.full_like(w, v0)
    for t, g in enumerate(GRADS, start=1):
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - g * g) * g * g
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - alpha * m / (np.sqrt(v) + eps)
    got, state = run_functional(optimizers.Yogi(lr, beta_1=b1, beta_2=b2, epsilon=eps, initial_accumulator_value=v0))
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[2]["w"].numpy(), v, rtol=1e-4, atol=1e-9)


def test_yogi_second_moment_grows_additively_not_multiplicatively():
    # One huge gradient: Adam's v jumps to (1-b2) g^2; Yogi's moves by the same amount from its start.
    big = [np.full((3, 2), 100.0, np.float32)]
    _, adam = run_functional(optimizers.Adam(0.01, beta_2=0.99), grads=big)
    _, yogi = run_functional(optimizers.Yogi(0.01, beta_2=0.99), grads=big)
    np.testing.assert_allclose(adam[2]["w"].numpy(), 100.0, rtol=1e-5)
    np.testing.assert_allclose(yogi[2]["w"].numpy(), 1e-6 + 100.0, rtol=1e-5)


def test_state_types_in_the_notation():
    weights_type = fedcore.to_type(collections.OrderedDict(kernel=(tf.float32, [2, 3]), bias=(tf.float32, [3])))

    def state_type(optimizer):
        @fedcore.tf_computation(weights_type)
        def init(weights):
            return optimizer.initialize(weights)

        return str(init.type_signature.result)

    slot = "<kernel=float32[2,3],bias=float32[3]>"
    assert state_type(optimizers.SGD(1.0)) == "<int64>"
    assert state_type(optimizers.SGD(1.0, momentum=0.9)) == f"<int64,{slot}>"
    assert state_type(optimizers.Adam()) == f"<int64,{slot},{slot}>"
    assert state_type(optimizers.Yogi()) == f"<int64,{slot},{slot}>"
    assert state_type(optimizers.Adagrad()) == f"<int64,{slot}>"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        optimizers.SGD(-1.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        optimizers.SGD(0.1, momentum=1.0)
    with pytest.raises(TypeError, match="learning_rate must be a number"):
        optimizers.Adam("fast")
    with pytest.raises(TypeError, match="RMSprop has no functional equivalent"):
        optimizers.from_keras(keras.optimizers.RMSprop())
    with pytest.raises(ValueError, match="clipnorm"):
        optimizers.from_keras(keras.optimizers.SGD(0.1, clipnorm=1.0))
    with pytest.raises(TypeError, match="expected a Keras optimizer"):
        optimizers.from_keras("sgd")
    with pytest.raises(TypeError, match="server_optimizer_fn returned 'sgd'"):
        optimizers.build(lambda: "sgd", "server_optimizer_fn")
    with pytest.raises(ValueError, match="expects a state of 2 elements"):
        optimizers.SGD(0.1, momentum=0.9).apply((tf.constant(0, tf.int64),), [tf.zeros(2)], [tf.zeros(2)])


def test_repr_and_equality():
    assert repr(optimizers.SGD(1.0)) == "SGD(learning_rate=1.0, momentum=0.0, nesterov=False)"
    assert optimizers.Adam(0.1) == optimizers.Adam(0.1) != optimizers.Adam(0.2)

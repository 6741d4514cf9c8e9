"""Federated SGD: one round is one gradient step on all the round's examples."""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.runtime.tensorflow import TensorFlowExecutor

from tests.learning.helpers import keras_model_fn, random_batches, run_rounds
from tests.learning.mnist_models import MnistModel


def _full_batch_gradient(datasets, kernel, bias):
    examples = [e for ds in datasets for e in ds.unbatch().as_numpy_iterator()]
    x = tf.constant(np.stack([e["x"] for e in examples]))
    y = tf.constant(np.stack([e["y"] for e in examples]))
    kernel, bias = tf.constant(kernel), tf.constant(bias)
    with tf.GradientTape() as tape:
        tape.watch([kernel, bias])
        p = tf.nn.softmax(x @ kernel + bias)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, p))
    return [g.numpy() for g in tape.gradient(loss, [kernel, bias])], len(examples)


def test_a_round_is_a_gradient_step_on_the_union_of_the_clients_data():
    process = learning.build_federated_sgd_process(
        keras_model_fn, server_optimizer_fn=lambda: learning.optimizers.SGD(learning_rate=0.5)
    )
    assert str(process.initialize.type_signature) == (
        "( -> <model=<trainable=<dense/kernel=float32[784,10],dense/bias=float32[10]>,non_trainable=<>>,"
        "optimizer_state=<int64>>@SERVER)"
    )
    data = [random_batches(13, batch_size=5, seed=1), random_batches(30, batch_size=7, seed=2)]
    state = process.initialize()
    state, _ = process.next(state, data)  # from zero weights
    kernel, bias = state.model.trainable["dense/kernel"], state.model.trainable["dense/bias"]
    new_state, metrics = process.next(state, data)
    (g_kernel, g_bias), n = _full_batch_gradient(data, kernel, bias)
    np.testing.assert_allclose(new_state.model.trainable["dense/kernel"], kernel - 0.5 * g_kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_state.model.trainable["dense/bias"], bias - 0.5 * g_bias, rtol=1e-4, atol=1e-6)
    assert metrics["num_examples"] == n == 43
    with fedcore.execution_context(TensorFlowExecutor()):
        on_tf, _ = process.next(state, data)
    np.testing.assert_allclose(on_tf.model.trainable["dense/kernel"], new_state.model.trainable["dense/kernel"], atol=1e-6)


def test_federated_sgd_with_a_custom_model():
    process = learning.build_federated_sgd_process(MnistModel)
    data = [random_batches(20, seed=1), random_batches(10, seed=2)]
    state, losses, metrics = run_rounds(process, data, 3)
    assert losses[2] < losses[1] < losses[0]
    assert metrics["num_examples"] == 30.0

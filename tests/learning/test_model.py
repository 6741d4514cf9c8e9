"""The Model interface and custom models with tf.Variables (the seed tutorial's MnistModel)."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.learning.model_functions import functions_for, unique_names
from fedcore.learning.training import model_functions

from tests.learning.mnist_models import MnistModel, MnistTrainableModel


def test_batch_output_defaults_num_examples_to_none():
    output = learning.BatchOutput(loss=1.0, predictions=2.0)
    assert output.num_examples is None
    assert learning.BatchOutput(1.0, 2.0, 3).num_examples == 3


def test_model_is_abstract():
    class Incomplete(learning.Model):
        @property
        def trainable_variables(self):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    assert issubclass(learning.TrainableModel, learning.Model)


def test_mnist_model_types_name_the_variables():
    fns = functions_for(MnistModel())
    assert fns.stateful
    assert str(fns.weights_type) == "<trainable=<weights=float32[784,10],bias=float32[10]>,non_trainable=<>>"
    assert str(fns.local_type) == "<num_examples=float32,loss_sum=float32,accuracy_sum=float32>"
    assert str(fns.input_type) == "<x=float32[?,784],y=int32[?]>"
    assert fns.has_train_on_batch is False
    assert functions_for(MnistTrainableModel()).has_train_on_batch


def test_repeated_variable_names_are_made_unique():
    assert unique_names(["v", "v", "w", "v", "v_1"]) == ["v", "v_2", "w", "v_3", "v_1"]


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return collections.OrderedDict(
        x=rng.random((n, 784), dtype=np.float32), y=rng.integers(0, 10, n).astype(np.int32)
    )


def _numpy_forward(w, b, batch):
    logits = batch["x"] @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(batch["y"])), batch["y"]]))
    accuracy = np.mean(np.argmax(p, 1) == batch["y"])
    return loss, accuracy


def test_assign_run_read_is_a_function_of_its_inputs():
    model = MnistModel()
    fns = functions_for(model)
    batch_type = fns.input_type

    @fedcore.tf_computation(fns.weights_type, fns.local_type, batch_type)
    def forward(weights, local, batch):
        output, _, local = fns.forward(weights, local, batch, training=True)
        return output.loss, local

    assert forward.ir.function.writes_variables
    rng = np.random.default_rng(1)
    w = rng.normal(size=(784, 10)).astype(np.float32) * 0.1
    b = rng.normal(size=10).astype(np.float32)
    weights = learning.ModelWeights(collections.OrderedDict(weights=w, bias=b), collections.OrderedDict())
    local = collections.OrderedDict(num_examples=4.0, loss_sum=8.0, accuracy_sum=1.0)
    batch = _batch()
    for _ in range(2):  # the same inputs give the same outputs: no state leaks from one call to the next
        loss, new_local = forward(weights, local, batch)
        expected_loss, expected_accuracy = _numpy_forward(w, b, batch)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        np.testing.assert_allclose(new_local["num_examples"], 10.0)
        np.testing.assert_allclose(new_local["loss_sum"], 8.0 + 6 * expected_loss, rtol=1e-5)
        np.testing.assert_allclose(new_local["accuracy_sum"], 1.0 + 6 * expected_accuracy, rtol=1e-5)


def test_gradients_of_a_variable_model_match_the_keras_route():
    fns = functions_for(MnistModel())
    rng = np.random.default_rng(2)
    w = rng.normal(size=(784, 10)).astype(np.float32) * 0.1

    @fedcore.tf_computation(fns.weights_type, fns.input_type)
    def gradient(weights, batch):
        _, grads, _, _ = fns.gradients(weights, fns.local_constant(), batch)
        return grads

    weights = learning.ModelWeights(collections.OrderedDict(weights=w, bias=np.zeros(10, np.float32)), {})
    batch = _batch(8, seed=3)
    got = gradient(weights, batch)
    x = tf.constant(batch["x"])
    wt = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(wt)
        p = tf.nn.softmax(x @ wt)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(batch["y"], p))
    np.testing.assert_allclose(got["weights"], tape.gradient(loss, wt).numpy(), rtol=1e-4, atol=1e-6)
    assert list(got) == ["weights", "bias"]


def test_model_fn_must_return_a_model():
    import keras

    with pytest.raises(TypeError, match="from_keras_model"):
        model_functions(lambda: keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    with pytest.raises(TypeError, match="model_fn must be a function"):
        model_functions(MnistModel())

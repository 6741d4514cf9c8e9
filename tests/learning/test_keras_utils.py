"""Keras 3 models as fedcore.learning Models: names, pure functions, metrics, compiled models."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.learning.model_functions import functions_for

from tests.learning.helpers import INPUT_SPEC, keras_model_fn, seed_keras_model


def test_weights_are_named_by_layer_and_variable_however_many_models_came_before():
    for _ in range(3):  # Keras would call the next Dense layer dense_3, dense_4, ...
        seed_keras_model()
    fns = functions_for(keras_model_fn())
    assert str(fns.weights_type) == "<trainable=<dense/kernel=float32[784,10],dense/bias=float32[10]>,non_trainable=<>>"
    assert not fns.stateful


def test_names_of_a_functional_model_with_batch_normalization():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="hidden")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dense(3)(h)
    outputs = keras.layers.Dense(2)(h)
    model = learning.from_keras_model(
        keras.Model(inputs, outputs),
        "sparse_categorical_crossentropy",
        (tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)),
    )
    fns = functions_for(model)
    assert str(fns.weights_type) == (
        "<trainable=<hidden/kernel=float32[4,3],hidden/bias=float32[3],batch_normalization/gamma=float32[3],"
        "batch_normalization/beta=float32[3],dense/kernel=float32[3,3],dense/bias=float32[3],"
        "dense_1/kernel=float32[3,2],dense_1/bias=float32[2]>,"
        "non_trainable=<batch_normalization/moving_mean=float32[3],batch_normalization/moving_variance=float32[3]>>"
    )
    assert str(fns.input_type) == "<float32[?,4],int32[?]>"


def _batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return collections.OrderedDict(
        x=rng.random((n, 784), dtype=np.float32), y=rng.integers(0, 10, n).astype(np.int32)
    )


def test_pure_functions_agree_with_the_stateful_model():
    model = keras_model_fn()
    for v in model.trainable_variables:
        v.assign(np.random.default_rng(5).normal(size=v.shape).astype(np.float32) * 0.1)
    fns = functions_for(model)
    batches = [_batch(7, 1), _batch(5, 2)]

    @fedcore.tf_computation(fns.weights_type, fns.input_type, fns.input_type)
    def two_batches(weights, first, second):
        local = fns.local_constant()
        out, _, local = fns.forward(weights, local, first, training=True)
        _, _, local = fns.forward(weights, local, second, training=True)
        return out.loss, fns.report(local)

    assert not two_batches.ir.function.variables  # no variable is read or written
    weights = learning.ModelWeights(
        collections.OrderedDict((n, v.numpy()) for n, v in zip(["dense/kernel", "dense/bias"], model.trainable_variables)),
        collections.OrderedDict(),
    )
    loss, outputs = two_batches(weights, *batches)
    stateful_loss = model.forward_pass(batches[0]).loss
    model.forward_pass(batches[1])
    expected = model.report_local_outputs()
    np.testing.assert_allclose(loss, stateful_loss.numpy(), rtol=1e-5)
    assert list(outputs) == ["accuracy", "loss", "num_examples"] == list(expected)
    np.testing.assert_allclose(outputs["accuracy"], [v.numpy() for v in expected["accuracy"]], rtol=1e-6)
    np.testing.assert_allclose(outputs["loss"], [v.numpy() for v in expected["loss"]], rtol=1e-5)
    assert outputs["num_examples"] == 12 == expected["num_examples"].numpy()


def test_metrics_are_aggregated_from_summed_metric_variables():
    model = keras_model_fn()
    aggregate = model.federated_output_computation
    assert str(aggregate.type_signature) == (
        "({<accuracy=<float32,float32>,loss=<float32,float32>,num_examples=int64>}@CLIENTS -> "
        "<accuracy=float32,loss=float32,num_examples=int64>@SERVER)"
    )
    result = aggregate(
        [
            dict(accuracy=(3.0, 4.0), loss=(8.0, 4.0), num_examples=4),
            dict(accuracy=(0.0, 12.0), loss=(12.0, 12.0), num_examples=12),
        ]
    )
    assert isinstance(result, collections.OrderedDict)
    np.testing.assert_allclose(result["accuracy"], 3.0 / 16)
    np.testing.assert_allclose(result["loss"], 20.0 / 16)
    assert result["num_examples"] == 16


def test_metric_names_and_strings():
    model = learning.from_keras_model(seed_keras_model(), "sparse_categorical_crossentropy", INPUT_SPEC, metrics=["accuracy"])
    assert [type(m).__name__ for m in model.metrics] == ["SparseCategoricalAccuracy"]
    assert [m.name for m in model.metrics] == ["accuracy"]
    with pytest.raises(ValueError, match="may not be named 'loss'"):
        learning.from_keras_model(seed_keras_model(), "mse", INPUT_SPEC, metrics=[keras.metrics.Mean(name="loss")])
    with pytest.raises(ValueError, match="unique"):
        learning.from_keras_model(seed_keras_model(), "mse", INPUT_SPEC, metrics=["mae", "mae"])


def test_bad_arguments_are_explained():
    with pytest.raises(TypeError, match="expected a Keras 3 model"):
        learning.from_keras_model(object(), "mse", INPUT_SPEC)
    with pytest.raises(TypeError, match="two parts"):
        learning.from_keras_model(seed_keras_model(), "mse", collections.OrderedDict(x=INPUT_SPEC["x"]))
    with pytest.raises(TypeError, match="name its parts x and y"):
        learning.from_keras_model(
            seed_keras_model(), "mse", collections.OrderedDict(pixels=INPUT_SPEC["x"], label=INPUT_SPEC["y"])
        )
    with pytest.raises(TypeError, match="loss must be"):
        learning.from_keras_model(seed_keras_model(), 3, INPUT_SPEC)
    with pytest.raises(ValueError, match="is not compiled"):
        learning.from_compiled_keras_model(seed_keras_model(), _batch())


def _compiled_seed_model(optimizer):
    model = seed_keras_model()

    def loss_fn(y_true, y_pred):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))

    model.compile(loss=loss_fn, optimizer=optimizer, metrics=[keras.metrics.SparseCategoricalAccuracy()])
    return model


def test_compiled_model_brings_its_loss_metrics_and_optimizer():
    model = learning.from_compiled_keras_model(_compiled_seed_model(keras.optimizers.SGD(learning_rate=0.02)), _batch(20))
    assert isinstance(model, learning.TrainableModel)
    assert str(fedcore.to_type(model.input_spec)) == "<x=float32[?,784],y=int32[?]>"
    assert [m.name for m in model.metrics] == ["sparse_categorical_accuracy"]
    fns = functions_for(model)
    assert fns.default_optimizer == learning.optimizers.SGD(np.float32(0.02).item())
    # train_on_batch (interactive use) steps the Keras optimizer on the Keras variables.
    before = model.trainable_variables[0].numpy().copy()
    model.train_on_batch(_batch(20))
    assert not np.allclose(model.trainable_variables[0].numpy(), before)


def test_compiled_model_with_an_unsupported_optimizer_needs_a_client_optimizer():
    model_fn = lambda: learning.from_compiled_keras_model(  # noqa: E731
        _compiled_seed_model(keras.optimizers.RMSprop()), _batch(4)
    )
    with pytest.raises(ValueError, match="pass client_optimizer_fn"):
        learning.build_federated_averaging_process(model_fn)


def test_regularization_losses_are_part_of_the_training_loss():
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.5))]
    )
    wrapped = learning.from_keras_model(model, keras.losses.SparseCategoricalCrossentropy(), INPUT_SPEC)
    fns = functions_for(wrapped)

    @fedcore.tf_computation(fns.weights_type, fns.input_type)
    def loss(weights, batch):
        return fns.forward(weights, fns.local_constant(), batch, training=True)[0].loss

    batch = _batch(5)
    kernel = model.trainable_variables[0].numpy()
    weights = learning.ModelWeights(
        collections.OrderedDict([("dense/kernel", kernel), ("dense/bias", np.zeros(10, np.float32))]), {}
    )
    cross_entropy = keras.losses.SparseCategoricalCrossentropy()(batch["y"], model(batch["x"])).numpy()
    np.testing.assert_allclose(loss(weights, batch), cross_entropy + 0.5 * np.sum(kernel**2), rtol=1e-5)
    assert not loss.ir.function.writes_variables

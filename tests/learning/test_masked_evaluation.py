"""Federated evaluation of Keras models gives its step a masked form where that is exact.

``build_federated_evaluation`` records a masked form of its per-batch step
(``fedcore.with_masked_form``) when the model's rows are independent in
inference and its loss and metrics weigh rows by a sample weight: Keras's
own layers, loss and metrics.  The TF executor then runs every client's
partial last batch, padded to the full batch size, in one call.  These tests
pin which models get it and that, with it or without, the metrics equal the
reference interpreter's on ragged cohorts, for Dense, CNN and recurrent
models and for metrics of every kind.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.learning import training
from fedcore.runtime.tensorflow import TensorFlowExecutor
from tests.runtime.test_masked_forms import steps_called

SIZES = [1, 19, 20, 21, 90, 0, 7]
BATCH = 20


def _dense(out=3, **layer_options):
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(out, activation="softmax", **layer_options)])


def _wrap(model, loss=None, metrics=None, x_shape=(None, 4), x_dtype=tf.float32, y_shape=(None,), y_dtype=tf.int32):
    spec = collections.OrderedDict(x=tf.TensorSpec(x_shape, x_dtype), y=tf.TensorSpec(y_shape, y_dtype))
    return learning.from_keras_model(model, loss=loss or keras.losses.SparseCategoricalCrossentropy(),
                                     input_spec=spec, metrics=metrics)


class Doubled(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def user_loss(y, p):
    return keras.losses.sparse_categorical_crossentropy(y, p)


def user_metric(y, p):
    return tf.reduce_mean(p, axis=-1)


def _cnn():
    model = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, padding="same", activation="relu"), keras.layers.MaxPool2D(2),
        keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    return _wrap(model, metrics=[keras.metrics.SparseCategoricalAccuracy()], x_shape=(None, 6, 6, 1))


def _per_step():
    # A prediction and a loss per position of each sequence, as a language model has.
    model = keras.Sequential([
        keras.Input((5,), dtype="int64"), keras.layers.Embedding(9, 4), keras.layers.Dense(6, activation="relu"),
        keras.layers.Dense(9)])
    return _wrap(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=[keras.metrics.SparseCategoricalAccuracy()], x_shape=(None, 5), x_dtype=tf.int64,
                 y_shape=(None, 5), y_dtype=tf.int64)


def _binary():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid",
                                                                  kernel_regularizer=keras.regularizers.L2(0.1))])
    return _wrap(model, loss=keras.losses.BinaryCrossentropy(), y_shape=(None, 1), y_dtype=tf.float32,
                 metrics=[keras.metrics.BinaryAccuracy(), keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall"),
                          keras.metrics.AUC(num_thresholds=20, name="auc"), keras.metrics.RootMeanSquaredError(),
                          keras.metrics.MeanSquaredError()])


MASKED = {
    "dense": lambda: _wrap(_dense(), metrics=[keras.metrics.SparseCategoricalAccuracy(),
                                              keras.metrics.SparseTopKCategoricalAccuracy(k=2)]),
    "dense, loss by name": lambda: _wrap(_dense(), loss="sparse_categorical_crossentropy", metrics=["accuracy"]),
    "cnn": _cnn,
    "embedding, per-step loss": _per_step,
    "binary, regularized, confusion metrics": _binary,
}

NOT_MASKED = {
    "a user's layer": (lambda: _wrap(keras.Sequential([keras.Input((4,)), Doubled(), keras.layers.Dense(3, activation="softmax")])),
                       "doubled"),
    "a Lambda layer": (lambda: _wrap(keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x - tf.reduce_mean(x, 0)),
                                                       keras.layers.Dense(3, activation="softmax")])), "lambda"),
    "a user's loss": (lambda: _wrap(_dense(), loss=user_loss), "loss"),
    "a loss summed": (lambda: _wrap(_dense(), loss=keras.losses.SparseCategoricalCrossentropy(reduction="sum")), "loss"),
    "a user's metric": (lambda: _wrap(_dense(), metrics=[user_metric]), "user_metric"),
    "an activity regularizer": (lambda: _wrap(_dense(activity_regularizer=keras.regularizers.L2(0.1))), "activity"),
    "a mask": (lambda: _wrap(keras.Sequential([keras.Input((5,), dtype="int64"), keras.layers.Embedding(9, 4, mask_zero=True),
                                               keras.layers.GRU(4), keras.layers.Dense(3, activation="softmax")]),
                             x_shape=(None, 5), x_dtype=tf.int64), "mask"),
}


def _data(model_fn, sizes=SIZES, seed=0):
    spec = model_fn().input_spec
    rng = np.random.default_rng(seed)
    x_spec, y_spec = spec["x"], spec["y"]
    out = []
    for n in sizes:
        if x_spec.dtype.is_integer:
            x = rng.integers(0, 9, (n,) + tuple(x_spec.shape[1:])).astype(x_spec.dtype.as_numpy_dtype)
        else:
            x = rng.normal(size=(n,) + tuple(x_spec.shape[1:])).astype(np.float32)
        high = 2 if y_spec.dtype.is_floating else 3
        y = rng.integers(0, high, (n,) + tuple(y_spec.shape[1:])).astype(y_spec.dtype.as_numpy_dtype)
        out.append(tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH))
    return out


def _both(model_fn, data, strategy="auto"):
    """The evaluation's metrics on the reference interpreter and on the TF executor, at the same weights."""
    evaluation = learning.build_federated_evaluation(model_fn)
    weights = training.model_functions(model_fn).initial_weights
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        expected = evaluation(weights, data)
    with steps_called() as steps, fedcore.execution_context(TensorFlowExecutor(strategy=strategy)):
        got = evaluation(weights, data)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]), rtol=2e-5, atol=1e-5, err_msg=key)
    return got, steps


@pytest.mark.parametrize("name", sorted(MASKED))
def test_keras_models_of_their_own_parts_evaluate_partial_batches_in_one_masked_call(name):
    model_fn = MASKED[name]
    assert training.model_functions(model_fn).why_not_masked() is None
    got, steps = _both(model_fn, _data(model_fn))
    assert sum(s.endswith(", masked") for s in steps) == 1, steps
    assert int(got["num_examples"]) == sum(SIZES)


@pytest.mark.parametrize("name", sorted(NOT_MASKED))
def test_other_models_say_why_they_get_no_masked_form_and_still_equal_the_reference(name):
    model_fn, reason = NOT_MASKED[name]
    why = training.model_functions(model_fn).why_not_masked()
    assert why is not None and reason in why.lower(), why
    _, steps = _both(model_fn, _data(model_fn))
    assert not any(s.endswith(", masked") for s in steps), steps


def test_the_masked_form_counts_only_real_rows_even_where_padding_would_change_a_metric():
    # Clients whose partial batch is one example: padded to 20 copies of it, a metric that counted the
    # copies (or a loss that averaged over them) would weigh that example 20 times.
    model_fn = MASKED["binary, regularized, confusion metrics"]
    _, steps = _both(model_fn, _data(model_fn, sizes=[21, 41, 1], seed=3), strategy="vectorized")
    assert sum(s.endswith(", masked") for s in steps) == 1, steps

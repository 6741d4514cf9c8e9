"""The model zoo of ``fedcore train``: its data, preprocessing, Keras models and input_spec."""

from __future__ import annotations

import argparse
import collections
from typing import Any, Callable

MODELS = ("linear", "cnn")


class DataModelMismatch(TypeError):
    """The training data's batches do not fit the model's input_spec; raised before any training."""


def load_client_data(args: argparse.Namespace):
    """(train, test, description) for ``args``: Federated EMNIST digits with --emnist, else the embedded digits."""
    from fedcore.simulation.datasets import digits, emnist

    if args.emnist is not None:
        train, test = emnist.load_data(only_digits=True, path=args.emnist)
        return train, test, f"Federated EMNIST digits from {args.emnist}"
    train, test = digits.load_data(num_clients=args.num_clients, seed=args.seed)
    return train, test, f"embedded digits, {args.num_clients} clients"


def preprocess(batch_size: int, epochs: int) -> Callable:
    """EMNIST-style elements -> batches ``<x=float32[?,784],y=int32[?,1]>``, repeated ``epochs`` times.

    ``x`` is the ink, ``1 - pixels``: 0.0 for background.  A blank background
    keeps plain SGD on a linear model well conditioned, where EMNIST's 1.0
    background would add a large constant to every input.
    """
    import tensorflow as tf

    def to_example(e):
        return collections.OrderedDict(x=1.0 - tf.reshape(e["pixels"], [784]), y=tf.reshape(e["label"], [1]))

    def to_batches(dataset):
        # Element-wise work before batch(): the TF executor then keeps the examples on the
        # device and steps all clients' full batches together.
        return dataset.repeat(epochs).map(to_example).batch(batch_size)

    return to_batches


def input_spec():
    import tensorflow as tf

    return collections.OrderedDict(
        x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None, 1], tf.int32)
    )


def keras_model(name: str, num_classes: int = 10):
    import tensorflow as tf

    layers = tf.keras.layers
    if name == "linear":
        return tf.keras.Sequential(
            [layers.Input(shape=(784,)), layers.Dense(num_classes, kernel_initializer="zeros"), layers.Softmax()]
        )
    if name == "cnn":
        return tf.keras.Sequential(
            [
                layers.Input(shape=(784,)),
                layers.Reshape((28, 28, 1)),
                layers.Conv2D(8, 5, strides=2, activation="relu"),
                layers.Conv2D(16, 3, strides=2, activation="relu"),
                layers.Flatten(),
                layers.Dense(num_classes),
                layers.Softmax(),
            ]
        )
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def save_keras_model(name: str, state: Any, path) -> None:
    """Saves the model ``name`` with the weights of a training state (``state.model``) as a ``.keras`` file."""
    import tensorflow as tf

    model = keras_model(name)
    weights = getattr(state, "model", state)
    weights.assign_weights_to(model)
    tf.keras.models.save_model(model, str(path))


def check_data_matches_model(data_type: Any, model_input_spec: Any) -> None:
    """Raises TypeError, showing both types in the notation, when batches of ``data_type`` can't feed the model."""
    from fedcore.types import to_type

    data_type = to_type(data_type)
    expected = to_type(model_input_spec)
    if not expected.is_assignable_from(data_type):
        raise DataModelMismatch(
            "the training data does not match the model's input_spec:\n"
            f"  model input_spec: {expected}\n"
            f"  data batches:     {data_type}"
        )

"""Shared data and models for the learning tests: the digits data set, preprocessed as in the seed tutorial."""

from __future__ import annotations

import collections
import functools

import keras
import numpy as np
import tensorflow as tf

from fedcore import learning
from fedcore.simulation.datasets import digits

BATCH_SIZE = 20
INPUT_SPEC = collections.OrderedDict(
    x=tf.TensorSpec([None, 784], tf.float32),
    y=tf.TensorSpec([None], tf.int32),
)


@functools.lru_cache(maxsize=1)
def digits_data():
    """The (train, test) ClientData of the digits: 20 clients, Dirichlet(0.5) over labels."""
    return digits.load_data(num_clients=20, alpha=0.5, test_fraction=0.2, seed=0)


def preprocess(dataset: tf.data.Dataset, epochs: int = 1) -> tf.data.Dataset:
    """Flatten to 784 inputs and batch, in a fixed order (no shuffling, for exact comparisons)."""
    return (
        dataset.repeat(epochs)
        .map(lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [784]), y=e["label"]))
        .batch(BATCH_SIZE)
    )


def federated_train_data(num_clients: int, epochs: int = 1):
    train, _ = digits_data()
    return [preprocess(train.create_tf_dataset_for_client(cid), epochs) for cid in train.client_ids[:num_clients]]


def federated_test_data():
    _, test = digits_data()
    return [preprocess(test.create_tf_dataset_for_client(cid)) for cid in test.client_ids]


def seed_keras_model() -> keras.Model:
    """The seed tutorial's model: one Dense(10, softmax) layer with zero initial weights on 784 inputs."""
    return keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
    )


def keras_model_fn():
    return learning.from_keras_model(
        seed_keras_model(),
        keras.losses.SparseCategoricalCrossentropy(),
        INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def random_batches(num_examples: int, batch_size: int = 10, seed: int = 0) -> tf.data.Dataset:
    """Synthetic linearly separable examples in the model's input format."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(123).normal(size=(784, 10)).astype(np.float32)
    x = rng.normal(size=(num_examples, 784)).astype(np.float32) * 0.1
    y = np.argmax(x @ w, axis=1).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(batch_size)


def run_rounds(process, data, rounds: int, state=None):
    """Runs ``rounds`` rounds of ``process`` from ``state`` (initialize() if None); returns
    (state, each round's training loss, the last round's metrics)."""
    state = process.initialize() if state is None else state
    losses, metrics = [], None
    for _ in range(rounds):
        state, metrics = process.next(state, data)
        losses.append(float(metrics["loss"]))
    return state, losses, metrics

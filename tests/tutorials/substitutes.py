"""Offline stand-ins for the downloads in TFF's tutorials, built from the embedded digits.

The tutorials download MNIST (``tf.keras.datasets.mnist.load_data()``) and
Federated EMNIST (``tff.simulation.datasets.emnist.load_data()``).  The tests
use scikit-learn's handwritten digits instead (``fedcore.simulation.datasets.digits``:
real data, shipped with scikit-learn), in the same formats:

* ``mnist_load_data()`` returns ``((x_train, y_train), (x_test, y_test))`` as
  Keras does: uint8 images [N, 28, 28] with ink 255 on a 0 background, and
  uint8 labels [N].  The first ``MNIST_TRAIN_SIZE`` digits are the training
  set (117 to 123 of each digit), the other 597 the test set.
* ``emnist_load_data()`` returns (train, test) ``ClientData`` whose elements
  are ``<label=int32,pixels=float32[28,28]>`` (1.0 is the background), as
  Federated EMNIST's are, split non-IID over ``EMNIST_CLIENTS`` writers.
"""

from __future__ import annotations

import numpy as np

from fedcore.simulation.datasets import digits

MNIST_TRAIN_SIZE = 1200
EMNIST_CLIENTS = 20


def mnist_load_data():
    """The digits as Keras' MNIST arrays: ((x_train, y_train), (x_test, y_test)), all uint8."""
    pixels, labels = digits.emnist_like_digits()
    images = np.round((1.0 - pixels) * 255.0).astype(np.uint8)
    labels = labels.astype(np.uint8)
    return (
        (images[:MNIST_TRAIN_SIZE], labels[:MNIST_TRAIN_SIZE]),
        (images[MNIST_TRAIN_SIZE:], labels[MNIST_TRAIN_SIZE:]),
    )


def emnist_load_data(only_digits: bool = True):
    """(train, test) ClientData with Federated EMNIST's element structure; only digits exist here."""
    if not only_digits:
        raise ValueError("the embedded digits have only the 10 digit classes; use only_digits=True")
    return digits.load_data(num_clients=EMNIST_CLIENTS, alpha=0.5, test_fraction=0.2, seed=0)

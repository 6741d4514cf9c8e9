"""A small, real, offline federated data set: scikit-learn's handwritten digits, made EMNIST-like.

scikit-learn ships 1797 scanned digits (8x8 images, ink from 0 to 16) with
its package, so this data set needs no download.  ``load_data`` turns them
into the Federated EMNIST format, so that the same preprocessing and the
same 784-input models work on both:

* **Images.** Ink is scaled to [0, 1], the 8x8 image is enlarged to 20x20 by
  bilinear interpolation (pixel centers aligned, edges clamped: each output
  pixel mixes the four nearest input pixels), and placed in the middle of a
  28x28 canvas with a 4-pixel margin, as MNIST centers digits in a 20x20 box.
  Then it is inverted: 1.0 is background and ink is darker, as in EMNIST.
* **Elements.** ``OrderedDict(label=int32 scalar, pixels=float32[28,28])``,
  the same keys, order, dtypes and shapes as EMNIST:
  ``<label=int32,pixels=float32[28,28]>``.
* **Clients.** Non-IID by label: for every label, the share of its examples
  that each client gets is drawn from a symmetric Dirichlet(``alpha``)
  distribution over the clients.  Small ``alpha`` gives each client few
  labels; large ``alpha`` approaches an even split.  Afterwards, any client
  with fewer than ``MIN_EXAMPLES_PER_CLIENT`` examples takes random examples
  from the largest client until it has that many.
* **Train and test.** Each client's examples, in a random order, are split:
  ``test_fraction`` of them (rounded, at least one when ``test_fraction`` > 0)
  go to its test set and the rest (at least one) to its train set.  Train and
  test have the same client ids.

Everything is drawn from one ``numpy`` generator seeded with ``seed``, so a
seed always gives the same data.
"""

from __future__ import annotations

import collections
import functools
from typing import Tuple

import numpy as np

from fedcore._extras import require
from fedcore.simulation.client_data import ClientData

MIN_EXAMPLES_PER_CLIENT = 5
IMAGE_SIZE = 28
DIGIT_BOX = 20


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """M with ``M @ x`` = x resized from size_in to size_out samples, bilinear, half-pixel centers."""
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    centers = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    centers = np.clip(centers, 0, size_in - 1)
    low = np.floor(centers).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    weight = centers - low
    matrix[np.arange(size_out), low] += 1 - weight
    matrix[np.arange(size_out), high] += weight
    return matrix


@functools.lru_cache(maxsize=1)
def emnist_like_digits() -> Tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (pixels float32 [N,28,28] with 1.0 background, labels int32 [N]); read-only."""
    datasets = require("sklearn.datasets", "datasets", "the embedded handwritten digits")
    digits = datasets.load_digits()
    ink = digits.images.astype(np.float64) / 16.0
    resize = _bilinear_matrix(ink.shape[1], DIGIT_BOX)
    big = np.einsum("ij,njk,lk->nil", resize, ink, resize)
    margin = (IMAGE_SIZE - DIGIT_BOX) // 2
    canvas = np.zeros((len(ink), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float64)
    canvas[:, margin : margin + DIGIT_BOX, margin : margin + DIGIT_BOX] = big
    pixels = (1.0 - np.clip(canvas, 0.0, 1.0)).astype(np.float32)
    labels = digits.target.astype(np.int32)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_examples: int
) -> np.ndarray:
    """The client of every example: per label, client shares ~ Dirichlet(alpha); then topped up to min_examples."""
    client_of = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(indices)).astype(int)
        for client, part in enumerate(np.split(indices, cuts)):
            client_of[part] = client
    counts = np.bincount(client_of, minlength=num_clients)
    for client in range(num_clients):
        while counts[client] < min_examples:
            donor = int(np.argmax(counts))
            candidates = np.flatnonzero(client_of == donor)
            client_of[rng.choice(candidates)] = client
            counts[donor] -= 1
            counts[client] += 1
    return client_of


def client_ids(num_clients: int) -> list:
    width = max(2, len(str(num_clients - 1)))
    return [f"client_{i:0{width}d}" for i in range(num_clients)]


def load_data(
    num_clients: int = 20, alpha: float = 0.5, test_fraction: float = 0.2, seed: int = 0
) -> Tuple[ClientData, ClientData]:
    """(train, test) ClientData of the digits, split non-IID over ``num_clients`` clients.

    Elements are ``OrderedDict(label=int32, pixels=float32[28,28])``, as in
    Federated EMNIST.  See the module documentation for how images are made
    EMNIST-like and how examples are assigned to clients.  Needs the ``datasets``
    extra (scikit-learn, which ships the digits); nothing is downloaded.

    Args:
        num_clients: how many clients share the 1797 digits (each gets at least
            ``MIN_EXAMPLES_PER_CLIENT``).
        alpha: the Dirichlet concentration of the label split; small is more non-IID.
        test_fraction: the share of each client's examples in its test set, in [0, 1).
        seed: the seed of the one generator everything is drawn from.

    Returns:
        ``(train, test)``, two ClientData with the same client ids.

    Raises:
        TypeError: when ``num_clients`` is not an int.
        ValueError: when ``num_clients``, ``alpha`` or ``test_fraction`` is out of range.
        ModuleNotFoundError: when scikit-learn is not installed (the message names the extra).
    """
    pixels, labels = emnist_like_digits()
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise TypeError(f"num_clients must be an int, got {num_clients!r}")
    most = len(labels) // MIN_EXAMPLES_PER_CLIENT
    if not 1 <= num_clients <= most:
        raise ValueError(
            f"num_clients must be between 1 and {most}: the {len(labels)} digits give every client at least "
            f"{MIN_EXAMPLES_PER_CLIENT} examples; got num_clients={num_clients}"
        )
    if not (isinstance(alpha, (int, float, np.floating, np.integer)) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not (isinstance(test_fraction, (int, float, np.floating)) and 0 <= test_fraction < 1):
        raise ValueError(f"test_fraction must be at least 0 and less than 1, got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    client_of = dirichlet_partition(labels, int(num_clients), float(alpha), rng, MIN_EXAMPLES_PER_CLIENT)
    train, test = {}, {}
    for client, cid in enumerate(client_ids(int(num_clients))):
        mine = rng.permutation(np.flatnonzero(client_of == client))
        num_test = 0 if test_fraction == 0 else min(max(1, int(round(test_fraction * len(mine)))), len(mine) - 1)
        for target, part in ((test, mine[:num_test]), (train, mine[num_test:])):
            target[cid] = collections.OrderedDict(label=labels[part], pixels=pixels[part])
    return ClientData.from_tensor_slices(train), ClientData.from_tensor_slices(test)

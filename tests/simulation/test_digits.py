import collections

import numpy as np
import pytest

from fedcore.simulation.datasets import digits


@pytest.fixture(scope="module")
def default_split():
    return digits.load_data()


def all_examples(client_data):
    labels, pixels = [], []
    for ds in client_data.datasets():
        for e in ds.as_numpy_iterator():
            labels.append(int(e["label"]))
            pixels.append(e["pixels"])
    return np.array(labels), np.array(pixels)


def test_elements_look_like_emnist(default_split):
    train, test = default_split
    assert str(train.element_type_structure) == "<label=int32,pixels=float32[28,28]>"
    assert str(test.element_type_structure) == "<label=int32,pixels=float32[28,28]>"
    element = next(iter(train.create_tf_dataset_for_client(train.client_ids[0])))
    assert isinstance(element, collections.OrderedDict) and list(element) == ["label", "pixels"]
    labels, pixels = all_examples(train)
    assert pixels.dtype == np.float32 and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert set(labels) == set(range(10))
    # 1.0 is background: the margin around the 20x20 digit box is blank, and most pixels are background.
    assert np.all(pixels[:, :4, :] == 1.0) and np.all(pixels[:, :, -4:] == 1.0)
    assert pixels.mean() > 0.75
    # Ink is darker: every image has some clearly dark pixels.
    assert np.all(pixels.min(axis=(1, 2)) < 0.3)


def test_clients_train_and_test_cover_every_digit_once(default_split):
    train, test = default_split
    assert train.client_ids == test.client_ids == [f"client_{i:02d}" for i in range(20)]
    train_labels, train_pixels = all_examples(train)
    test_labels, test_pixels = all_examples(test)
    pixels, labels = digits.emnist_like_digits()
    assert len(train_labels) + len(test_labels) == len(labels) == 1797
    combined = np.concatenate([train_pixels, test_pixels]).reshape(1797, -1)
    reference = pixels.reshape(1797, -1)
    # The same multiset of images: sort rows and compare.
    np.testing.assert_array_equal(np.unique(combined, axis=0), np.unique(reference, axis=0))
    assert np.bincount(np.concatenate([train_labels, test_labels])).tolist() == np.bincount(labels).tolist()


def test_every_client_has_a_few_examples_and_a_test_share(default_split):
    train, test = default_split
    for cid in train.client_ids:
        n_train = len(list(train.create_tf_dataset_for_client(cid)))
        n_test = len(list(test.create_tf_dataset_for_client(cid)))
        assert n_train >= 1 and n_test >= 1
        assert n_train + n_test >= digits.MIN_EXAMPLES_PER_CLIENT
        assert abs(n_test - 0.2 * (n_train + n_test)) <= 1


def test_deterministic_for_a_seed():
    first = digits.load_data(num_clients=6, seed=3)[0]
    again = digits.load_data(num_clients=6, seed=3)[0]
    other = digits.load_data(num_clients=6, seed=4)[0]
    a, b, c = (all_examples(d)[0].tolist() for d in (first, again, other))
    assert a == b and a != c


def _label_concentration(client_data):
    shares = []
    for ds in client_data.datasets():
        labels = [int(e["label"]) for e in ds.as_numpy_iterator()]
        shares.append(np.bincount(labels, minlength=10).max() / len(labels))
    return float(np.mean(shares))


def test_alpha_controls_how_non_iid_the_clients_are():
    skewed = _label_concentration(digits.load_data(num_clients=10, alpha=0.05, test_fraction=0.0)[0])
    even = _label_concentration(digits.load_data(num_clients=10, alpha=1000.0, test_fraction=0.0)[0])
    assert skewed > 0.6 and even < 0.25


def test_many_small_clients_still_get_the_minimum():
    train, test = digits.load_data(num_clients=300, alpha=0.05, test_fraction=0.0)
    sizes = [len(list(ds)) for ds in train.datasets()]
    assert min(sizes) >= digits.MIN_EXAMPLES_PER_CLIENT and sum(sizes) == 1797
    assert all(len(list(ds)) == 0 for ds in test.datasets(limit_count=3))


def test_bad_arguments():
    with pytest.raises(ValueError) as info:
        digits.load_data(num_clients=1000)
    assert "1000" in str(info.value) and "359" in str(info.value)
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        digits.load_data(alpha=0)
    with pytest.raises(ValueError, match="test_fraction"):
        digits.load_data(test_fraction=1.0)
    with pytest.raises(TypeError, match="num_clients must be an int"):
        digits.load_data(num_clients=2.5)


def test_bilinear_matrix_keeps_constants_and_interpolates():
    matrix = digits._bilinear_matrix(8, 20)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    ramp = np.arange(8, dtype=np.float64)
    resized = matrix @ ramp
    assert np.all(np.diff(resized) >= 0) and resized[0] == 0.0 and resized[-1] == 7.0

"""Pairwise-masking secure summation: exact sums, masked values independent of inputs, bounds errors."""

import collections

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import fedcore
from fedcore.runtime import secure_aggregation as sa
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow import TensorFlowExecutor

EXECUTORS = [fedcore.ReferenceExecutor, TensorFlowExecutor]


def _protocol_sum(values, max_input, entropy=None):
    """The protocol on one leaf per client, by its three roles."""
    n = len(values)
    bits = sa.modulus_bits(n, max_input)
    seeds = sa.pairwise_seeds(n, entropy)
    masked = [
        sa.mask(i, np.asarray(v, np.uint64).ravel(), sa.client_seeds(i, seeds), bits) for i, v in enumerate(values)
    ]
    return masked, sa.unmask_sum(masked, bits)


# --------------------------------------------------------------------------
# The masked sum is the plain sum.


@pytest.mark.parametrize("n", [2, 3, 7])
def test_masked_sum_equals_the_plain_sum(n):
    rng = np.random.default_rng(n)
    values = [rng.integers(0, 1000, size=50) for _ in range(n)]
    masked, total = _protocol_sum(values, 999, entropy=n)
    np.testing.assert_array_equal(total, np.sum(values, axis=0))
    for v, y in zip(values, masked):  # and no client's masked vector is its value
        assert not np.array_equal(v, y)


def test_the_sum_is_exact_near_the_64_bit_limit():
    max_input = 2**61
    values = [[max_input, 0, 12345], [max_input, 1, 2**60], [max_input - 7, 2**61, 3]]
    assert sa.modulus_bits(3, max_input) == 63
    sums = sa.secure_sum(
        [[np.asarray(v, np.int64)] for v in values], [np.asarray(max_input, np.int64)], [np.dtype(np.uint64)]
    )
    assert [int(x) for x in sums[0]] == [3 * max_input - 7, 1 + 2**61, 12345 + 2**60 + 3]


def test_modulus_bits_is_the_smallest_that_holds_every_sum():
    assert sa.modulus_bits(3, 5) == 4  # sums up to 15 < 16
    assert sa.modulus_bits(4, 4) == 5  # 16 needs 5 bits
    assert sa.modulus_bits(1, 0) == 1
    assert sa.modulus_bits(2, 2**63 - 1) == 64
    with pytest.raises(sa.SecureSumError, match="needs 65 bits, more than the 64-bit"):
        sa.modulus_bits(2, 2**63)


def test_masks_cancel_and_hide_zeros():
    masked, total = _protocol_sum([np.zeros(16, np.int64)] * 4, 100, entropy=1)
    assert not total.any()
    assert all(y.any() for y in masked)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_federated_secure_sum_runs_the_protocol_on_both_executors(executor, monkeypatch):
    seen = []
    unmask = sa.unmask_sum

    def spy(masked, bits, size=None):
        seen.append([np.array(y) for y in masked])
        return unmask(masked, bits, size)

    monkeypatch.setattr(sa, "unmask_sum", spy)
    spec = collections.OrderedDict(a=tf.TensorSpec([8], tf.int32), b=tf.TensorSpec([], tf.int64))

    @fedcore.federated_computation(fedcore.type_at_clients(spec))
    def secure(x):
        return fedcore.federated_secure_sum(x, collections.OrderedDict(a=1000, b=np.int64(2**40)))

    rng = np.random.default_rng(0)
    clients = [
        collections.OrderedDict(a=rng.integers(0, 1001, 8).astype(np.int32), b=np.int64(rng.integers(0, 2**40)))
        for _ in range(5)
    ]
    with fedcore.execution_context(executor()):
        result = secure(clients)
    np.testing.assert_array_equal(result["a"], np.sum([c["a"] for c in clients], axis=0))
    assert result["b"] == sum(int(c["b"]) for c in clients)
    # The server-side function got one masked vector per client, none of them a client's encoded value.
    assert len(seen) == 1 and len(seen[0]) == 5
    for c, y in zip(clients, seen[0]):
        encoded = np.concatenate([c["a"].astype(np.uint64), [np.uint64(c["b"])]])
        assert y.dtype == np.uint64 and y.shape == encoded.shape
        assert not np.any(y == encoded)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fresh_masks_every_call(executor, monkeypatch):
    seen = []
    unmask = sa.unmask_sum
    monkeypatch.setattr(sa, "unmask_sum", lambda masked, bits, size=None: seen.append(masked) or unmask(masked, bits))

    @fedcore.federated_computation(fedcore.type_at_clients(tf.TensorSpec([4], tf.int32)))
    def secure(x):
        return fedcore.federated_secure_sum(x, 50)

    values = [np.arange(4, dtype=np.int32), np.full(4, 50, np.int32)]
    with fedcore.execution_context(executor()):
        first, second = secure(values), secure(values)
    np.testing.assert_array_equal(first, [50, 51, 52, 53])
    np.testing.assert_array_equal(second, first)
    assert not np.array_equal(seen[0][0], seen[1][0])


# --------------------------------------------------------------------------
# A masked contribution tells nothing about its input.

DRAWS = 4000


def _client0_masked(value, max_input, num_clients, masking=True, first_entropy=0):
    """Client 0's masked value over DRAWS independent key agreements (reproducible entropies)."""
    bits = sa.modulus_bits(num_clients, max_input)
    out = np.empty(DRAWS, np.uint64)
    for d in range(DRAWS):
        seeds = sa.client_seeds(0, sa.pairwise_seeds(num_clients, entropy=first_entropy + d)) if masking else {}
        out[d] = sa.mask(0, np.asarray([value], np.uint64), seeds, bits)[0]
    return out, bits


def _two_sample_p(a, b, bins):
    table = np.stack([np.bincount(a.astype(np.int64), minlength=bins), np.bincount(b.astype(np.int64), minlength=bins)])
    table = table[:, table.sum(axis=0) > 0]
    return stats.chi2_contingency(table)[1]


def test_a_masked_value_has_the_same_distribution_whatever_the_input():
    low, bits = _client0_masked(0, 15, 3)  # 3 clients, max_input 15: k = 6, 64 possible masked values
    high, _ = _client0_masked(15, 15, 3, first_entropy=DRAWS)  # other key agreements
    assert bits == 6
    p_same = _two_sample_p(low, high, 2**bits)
    p_uniform_low = stats.chisquare(np.bincount(low.astype(np.int64), minlength=64))[1]
    p_uniform_high = stats.chisquare(np.bincount(high.astype(np.int64), minlength=64))[1]
    # Measured with these fixed entropies: p = 0.69 (same distribution), 0.69 and 0.50 (uniform).
    assert p_same > 1e-3 and p_uniform_low > 1e-3 and p_uniform_high > 1e-3, (p_same, p_uniform_low, p_uniform_high)


def test_the_distribution_test_detects_an_unmasked_value():
    # The same test has the power to tell the inputs apart without masking.
    low, _ = _client0_masked(0, 15, 3, masking=False)
    high, _ = _client0_masked(15, 15, 3, masking=False)
    assert _two_sample_p(low, high, 64) < 1e-100  # p is 0.0 in float64


def test_a_masked_vector_is_uniform_in_every_coordinate():
    bits = sa.modulus_bits(4, 3)  # 4 clients, max_input 3: k = 4
    seeds = sa.client_seeds(2, sa.pairwise_seeds(4, entropy=99))
    masked = sa.mask(2, np.full(20000, 3, np.uint64), seeds, bits)
    p = stats.chisquare(np.bincount(masked.astype(np.int64), minlength=16))[1]
    assert p > 1e-3, p


# --------------------------------------------------------------------------
# Bounds and bad input.


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_value_above_max_input_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 5)

    with fedcore.execution_context(executor()):
        assert secure([1, 5, 0]) == 6
        with pytest.raises(ExecutionError, match=r"client 1 gave 7, outside the allowed range \[0, 5\]"):
            secure([1, 7])
        with pytest.raises(ExecutionError, match=r"client 0 gave -1, outside the allowed range"):
            secure([-1, 2])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_max_input_too_large_for_64_bit_masking_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int64))
    def secure(x):
        return fedcore.federated_secure_sum(x, np.int64(2**62))

    with fedcore.execution_context(executor()):
        assert secure([1, 2, 3]) == 6  # 3 * 2^62 < 2^64
        with pytest.raises(ExecutionError, match="4 clients with max_input=4611686018427387904 .* more than the 64-bit"):
            secure([1, 2, 3, 4])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_sum_that_overflows_its_dtype_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 2**31 - 1)

    with fedcore.execution_context(executor()):
        with pytest.raises(ExecutionError, match="the sum 4294967294 .* overflows int32"):
            secure([2**31 - 1, 2**31 - 1])


def test_bad_protocol_inputs_are_clear_errors():
    with pytest.raises(sa.SecureSumError, match="1-D uint64 vector, got int64"):
        sa.mask(0, np.zeros(3, np.int64), {}, 8)
    with pytest.raises(sa.SecureSumError, match="does not fit in 4 bits"):
        sa.mask(0, np.asarray([16], np.uint64), {}, 4)
    with pytest.raises(sa.SecureSumError, match="cannot share a seed with itself"):
        sa.mask(1, np.asarray([1], np.uint64), {1: 5}, 4)
    with pytest.raises(sa.SecureSumError, match="1 to 64 bits, got 65"):
        sa.unmask_sum([np.zeros(2, np.uint64)], 65)
    with pytest.raises(sa.SecureSumError, match="must all be uint64 of shape"):
        sa.unmask_sum([np.zeros(2, np.uint64), np.zeros(3, np.uint64)], 8)
    with pytest.raises(sa.SecureSumError, match="max_input must be >= 0"):
        sa.modulus_bits(2, -1)
    with pytest.raises(sa.SecureSumError, match="needs integer values"):
        sa.secure_sum([[np.float32(1.0)]], [np.asarray(2)], [np.dtype(np.float32)])
    with pytest.raises(sa.SecureSumError, match="has shape"):
        sa.secure_sum([[np.zeros(2, np.int32)], [np.zeros(3, np.int32)]], [np.asarray(2)], [np.dtype(np.int32)])


def test_pairwise_seeds_are_per_pair_and_reproducible_only_when_asked():
    seeds = sa.pairwise_seeds(4, entropy=7)
    assert sorted(seeds) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(set(seeds.values())) == 6
    assert seeds == sa.pairwise_seeds(4, entropy=7)
    assert sa.pairwise_seeds(4) != sa.pairwise_seeds(4)
    assert sa.client_seeds(2, seeds) == {0: seeds[(0, 2)], 1: seeds[(1, 2)], 3: seeds[(2, 3)]}

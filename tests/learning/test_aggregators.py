"""Aggregators: secure weighted mean (fixed point + federated_secure_sum) and DP-FedAvg (clipping + Gaussian noise)."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.runtime.tensorflow import TensorFlowExecutor

from tests.learning.helpers import keras_model_fn, random_batches

UPDATE = collections.OrderedDict(
    a=tf.TensorSpec([3], tf.float32), b=collections.OrderedDict(c=tf.TensorSpec([2, 2], tf.float32))
)
CLIENT_SGD = lambda: learning.optimizers.SGD(learning_rate=0.02)  # noqa: E731


def _aggregation(aggregator, update_spec=UPDATE):
    @fedcore.federated_computation(
        fedcore.type_at_clients(update_spec), fedcore.type_at_clients(tf.float32), fedcore.type_at_server(tf.int64)
    )
    def aggregate(updates, weights, round_number):
        return aggregator.aggregate(updates, weights, round_number)

    return aggregate


def _flat(update):
    return np.concatenate([np.ravel(update["a"]), np.ravel(update["b"]["c"])]).astype(np.float64)


def _updates(num_clients, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return [
        collections.OrderedDict(
            a=(scale * rng.uniform(-1, 1, 3)).astype(np.float32),
            b=collections.OrderedDict(c=(scale * rng.uniform(-1, 1, (2, 2))).astype(np.float32)),
        )
        for _ in range(num_clients)
    ]


# --------------------------------------------------------------------------
# Secure aggregation.


@pytest.mark.parametrize("executor", [fedcore.ReferenceExecutor, TensorFlowExecutor])
def test_secure_mean_equals_the_plain_weighted_mean_within_the_quantization_bound(executor):
    updates, weights = _updates(6), [10.0, 25.0, 0.0, 7.0, 40.0, 1.0]
    secure = learning.SecureAggregator(update_bound=1.0, bits=16)
    with fedcore.execution_context(executor()):
        got = _flat(_aggregation(secure)(updates, weights, 0))
        plain = _flat(_aggregation(learning.MeanAggregator())(updates, weights, 0))
    error = np.max(np.abs(got - plain))
    assert secure.quantization_bound == pytest.approx(1.0 / 65534)
    assert error <= secure.quantization_bound + 1e-7, error
    assert error > 0  # the quantization is real: 16 bits do not carry every float32 digit


def test_secure_mean_clips_each_coordinate_to_the_update_bound():
    updates, weights = _updates(4, scale=3.0, seed=1), [1.0, 2.0, 3.0, 4.0]
    secure = learning.SecureAggregator(update_bound=0.5)
    got = _flat(_aggregation(secure)(updates, weights, 0))
    clipped = np.average([np.clip(_flat(u), -0.5, 0.5) for u in updates], axis=0, weights=weights)
    assert np.max(np.abs(got - clipped)) <= secure.quantization_bound + 1e-7


def test_secure_mean_leaves_out_non_finite_updates():
    updates, weights = _updates(3, seed=2), [5.0, 5.0, 10.0]
    updates[1]["a"][0] = np.nan
    updates[2]["b"]["c"][1, 1] = np.inf
    got = _flat(_aggregation(learning.SecureAggregator())(updates, weights, 0))
    np.testing.assert_allclose(got, _flat(updates[0]), atol=2e-6)
    updates[0]["a"][2] = -np.inf  # nothing usable left: NaN, as the plain mean of no weight
    assert np.all(np.isnan(_flat(_aggregation(learning.SecureAggregator())(updates, weights, 0))))


def test_fedavg_with_secure_true_matches_plain_fedavg_within_the_quantization_bound():
    data = [random_batches(n, seed=s) for s, n in enumerate((20, 35, 50))]
    plain = learning.build_federated_averaging_process(keras_model_fn, client_optimizer_fn=CLIENT_SGD)
    secure = learning.build_federated_averaging_process(keras_model_fn, client_optimizer_fn=CLIENT_SGD, secure=True)
    assert str(secure.next.type_signature) == str(plain.next.type_signature)
    plain_state, plain_metrics = plain.next(plain.initialize(), data)
    secure_state, secure_metrics = secure.next(secure.initialize(), data)
    bound = learning.SecureAggregator().quantization_bound  # the defaults: update_bound 1, 20 bits
    for name, w in plain_state.model.trainable.items():
        assert np.max(np.abs(w)) < 1.0  # within the update bound: nothing clipped
        error = np.max(np.abs(secure_state.model.trainable[name] - w))
        assert error <= bound + 1e-7, (name, error)
    assert secure_metrics["loss"] == pytest.approx(plain_metrics["loss"])


# --------------------------------------------------------------------------
# Differential privacy.


def test_dp_clipping_bounds_each_clients_contribution():
    updates = _updates(3, seed=3)
    norms = [10.0, 0.5, 3.0]
    for u, n in zip(updates, norms):
        flat = _flat(u)
        u["a"] *= np.float32(n / np.linalg.norm(flat))
        u["b"]["c"] *= np.float32(n / np.linalg.norm(flat))
    dp = learning.DPAggregator(noise_multiplier=0.0, clip_norm=1.0, seed=0)
    got = _flat(_aggregation(dp)(updates, [1.0, 50.0, 3.0], 0))
    clipped = [_flat(u) * min(1.0, 1.0 / np.linalg.norm(_flat(u))) for u in updates]
    np.testing.assert_allclose(got, np.mean(clipped, axis=0), atol=1e-6)  # unweighted
    # Sensitivity: one more client, however large its update, moves the sum by at most clip_norm.
    huge = _updates(1, scale=1e6, seed=4)
    with_huge = _flat(_aggregation(dp)(updates + huge, [1.0, 50.0, 3.0, 9.0], 0))
    change = np.linalg.norm(4 * with_huge - 3 * got)
    assert change == pytest.approx(1.0, rel=1e-5)


def test_dp_leaves_out_non_finite_and_weightless_clients():
    updates = _updates(4, scale=0.1, seed=5)
    updates[1]["a"][1] = np.nan
    dp = learning.DPAggregator(noise_multiplier=0.0, clip_norm=10.0, seed=0)
    got = _flat(_aggregation(dp)(updates, [1.0, 1.0, 0.0, 2.0], 0))
    np.testing.assert_allclose(got, (_flat(updates[0]) + _flat(updates[3])) / 2, atol=1e-6)


def test_dp_noise_has_the_configured_scale():
    spec = collections.OrderedDict(w=tf.TensorSpec([100, 100], tf.float32), b=tf.TensorSpec([100], tf.float32))
    zeros = [collections.OrderedDict(w=np.zeros((100, 100), np.float32), b=np.zeros(100, np.float32))] * 4
    dp = learning.DPAggregator(noise_multiplier=1.5, clip_norm=2.0, seed=42)
    aggregate = _aggregation(dp, spec)
    rounds = [np.concatenate([np.ravel(v) for v in aggregate(zeros, [1.0] * 4, r).values()]) for r in range(3)]
    expected = dp.noise_stddev / 4  # noise_multiplier * clip_norm on the sum, divided by 4 clients
    assert dp.noise_stddev == 3.0
    for noise in rounds:  # 10,100 draws a round
        assert np.std(noise) == pytest.approx(expected, rel=0.03), np.std(noise)
        assert abs(np.mean(noise)) < 4 * expected / np.sqrt(noise.size)
    assert abs(np.corrcoef(rounds[0], rounds[1])[0, 1]) < 0.05  # fresh noise every round
    np.testing.assert_array_equal(rounds[2], np.concatenate([np.ravel(v) for v in aggregate(zeros, [1.0] * 4, 2).values()]))
    other_seed = _aggregation(learning.DPAggregator(noise_multiplier=1.5, clip_norm=2.0, seed=43), spec)
    assert not np.allclose(rounds[0], np.concatenate([np.ravel(v) for v in other_seed(zeros, [1.0] * 4, 0).values()]))


def test_dp_with_secure_summation_matches_the_plain_clipped_sum():
    updates = _updates(5, scale=2.0, seed=6)
    plain = _flat(_aggregation(learning.DPAggregator(0.0, clip_norm=1.0, seed=0))(updates, [1.0] * 5, 0))
    secure_dp = learning.DPAggregator(0.0, clip_norm=1.0, seed=0, secure=True)
    with fedcore.execution_context(TensorFlowExecutor()):
        got = _flat(_aggregation(secure_dp)(updates, [1.0] * 5, 0))
    assert np.max(np.abs(got - plain)) <= 1.0 / (2**20 - 1) + 1e-7


def test_dp_fedavg_adds_noise_of_the_configured_scale_to_the_model():
    data = [random_batches(30, seed=s) for s in range(3)]  # equal sizes: weighted and unweighted means agree
    plain = learning.build_federated_averaging_process(keras_model_fn, client_optimizer_fn=CLIENT_SGD)
    noiseless = learning.build_federated_averaging_process(
        keras_model_fn, client_optimizer_fn=CLIENT_SGD, aggregator=learning.DPAggregator(0.0, clip_norm=100.0, seed=1)
    )
    noisy = learning.build_federated_averaging_process(
        keras_model_fn, client_optimizer_fn=CLIENT_SGD, aggregator=learning.DPAggregator(0.5, clip_norm=100.0, seed=1)
    )
    plain_state, _ = plain.next(plain.initialize(), data)
    kernel = plain_state.model.trainable["dense/kernel"]
    np.testing.assert_allclose(noiseless.next(noiseless.initialize(), data)[0].model.trainable["dense/kernel"], kernel, atol=1e-6)
    difference = noisy.next(noisy.initialize(), data)[0].model.trainable["dense/kernel"] - kernel
    assert np.std(difference) == pytest.approx(0.5 * 100.0 / 3, rel=0.05)  # 7840 draws


# --------------------------------------------------------------------------
# Bad arguments.


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="noise_multiplier must be a finite number >= 0, got -1"):
        learning.DPAggregator(noise_multiplier=-1, clip_norm=1.0)
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number, got 0"):
        learning.DPAggregator(noise_multiplier=1.0, clip_norm=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        learning.DPAggregator(noise_multiplier=1.0, clip_norm=1.0, seed="x")
    with pytest.raises(ValueError, match="update_bound must be a positive finite number, got nan"):
        learning.SecureAggregator(update_bound=float("nan"))
    with pytest.raises(ValueError, match="too large for 64-bit secure summation"):
        learning.SecureAggregator(max_weight=2**40, bits=30)
    with pytest.raises(TypeError, match="secure must be True or False"):
        learning.build_federated_averaging_process(keras_model_fn, secure="yes")
    with pytest.raises(TypeError, match="aggregator must be a fedcore.learning.Aggregator"):
        learning.build_federated_averaging_process(keras_model_fn, aggregator=object())
    with pytest.raises(ValueError, match="secure=True cannot be combined with DPAggregator"):
        learning.build_federated_averaging_process(
            keras_model_fn, secure=True, aggregator=learning.DPAggregator(1.0, 1.0, seed=0)
        )
    with pytest.raises(TypeError, match="floating-point tensors, got int32"):
        _aggregation(learning.SecureAggregator(), tf.TensorSpec([2], tf.int32))


# --------------------------------------------------------------------------
# Bounds outside what the encoding carries are refused; inside, the result is right (never silently lost).

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: learning.SecureAggregator(update_bound=1e308), r"update_bound must be between .* with bits=20 .*got 1e\+308"),
        (lambda: learning.DPAggregator(noise_multiplier=1.0, clip_norm=1e308, seed=0),
         r"clip_norm must be between 0 and 1.634e\+307 with noise_multiplier=1.0"),
        (lambda: learning.DPAggregator(noise_multiplier=0.0, clip_norm=1e308, seed=0, secure=True),
         r"clip_norm must be between .* with secure=True and bits=20"),
    ],
)
def test_bounds_beyond_float64_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bounds_beyond_the_update_dtype_are_refused_when_the_process_is_built():
    with pytest.raises(ValueError, match=r"update_bound must be between 6.163e-33 and 3.403e\+38 for float32 updates"):
        _aggregation(learning.SecureAggregator(1e200))
    with pytest.raises(ValueError, match=r"clip_norm must be between .* and 3.093e\+37 for float32 updates of 7 "):
        _aggregation(learning.DPAggregator(noise_multiplier=1.0, clip_norm=1e300, seed=0))
    with pytest.raises(ValueError, match=r"clip_norm must be between 3.11e-38 and .* of 7 coordinates"):
        _aggregation(learning.DPAggregator(noise_multiplier=0.0, clip_norm=1e-40, seed=0))


@settings(max_examples=12, deadline=None)
@given(exponent=st.floats(-40, 45), bits=st.integers(8, 30))
@example(exponent=308.0, bits=20).via("the bound of a model left unchanged every round")
@example(exponent=300.0, bits=20).via("a step that overflows float32 once decoded")
@example(exponent=-300.0, bits=20).via("a step that underflows")
def test_a_secure_mean_is_refused_or_within_its_quantization_bound(exponent, bits):
    """Any update_bound is either refused, naming it, or gives the clipped weighted mean within the bound."""
    bound = 10.0**exponent
    try:
        aggregator = learning.SecureAggregator(update_bound=bound, bits=bits)
        aggregate = _aggregation(aggregator)
    except ValueError as e:
        assert "update_bound must be between" in str(e)
        return
    updates, weights = _updates(3, scale=bound / 2, seed=bits), [3.0, 1.0, 2.0]
    got = _flat(aggregate(updates, weights, 0))
    want = np.average([_flat(u) for u in updates], axis=0, weights=weights)
    assert np.all(np.isfinite(got))
    tolerance = aggregator.quantization_bound + np.abs(want) * 2.0**-22 + 1e-44
    assert np.all(np.abs(got - want) <= tolerance), (bound, bits, got, want)


@settings(max_examples=12, deadline=None)
@given(exponent=st.floats(-40, 45), noise=st.sampled_from([0.0, 1.0]), secure=st.booleans())
@example(exponent=308.0, noise=1.0, secure=False).via("noise that overflows: a model left unchanged every round")
@example(exponent=300.0, noise=0.0, secure=True).via("a fixed-point step that overflows float32")
def test_a_dp_mean_is_refused_or_finite_and_right_without_noise(exponent, noise, secure):
    clip_norm = 10.0**exponent
    try:
        aggregator = learning.DPAggregator(noise_multiplier=noise, clip_norm=clip_norm, seed=1, secure=secure)
        aggregate = _aggregation(aggregator)
    except ValueError as e:
        assert "clip_norm must be between" in str(e)
        return
    updates = _updates(3, scale=min(clip_norm, 1e38), seed=2)
    got = _flat(aggregate(updates, [1.0] * 3, 0))
    assert np.all(np.isfinite(got)), (clip_norm, noise, secure, got)
    if noise == 0.0:
        clipped = [_flat(u) * min(1.0, clip_norm / np.linalg.norm(_flat(u))) for u in updates]
        want = np.mean(clipped, axis=0)
        step = 2 * clip_norm / (2**aggregator.bits - 2) if secure else 0.0
        assert np.all(np.abs(got - want) <= step + np.abs(want) * 2.0**-20 + np.max(np.abs(want)) * 2.0**-20 + 1e-44)


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(2, 30), exponent=st.floats(-5, 5), zeros=st.lists(st.booleans(), min_size=7, max_size=7))
def test_zero_coordinates_stay_exactly_zero_through_the_secure_mean(bits, exponent, zeros):
    """Zero is a fixed-point code: coordinates that are zero for every client sum to exactly zero (no drift)."""
    aggregator = learning.SecureAggregator(update_bound=10.0**exponent, bits=bits)
    mask = np.array(zeros)
    updates = []
    for u in _updates(3, scale=10.0**exponent, seed=bits):
        flat = np.where(mask, 0.0, _flat(u)).astype(np.float32)
        updates.append(collections.OrderedDict(a=flat[:3], b=collections.OrderedDict(c=flat[3:].reshape(2, 2))))
    got = _flat(_aggregation(aggregator)(updates, [3.0, 1.0, 2.0], 0))
    assert np.all(got[mask] == 0.0), got
    want = np.average([_flat(u) for u in updates], axis=0, weights=[3.0, 1.0, 2.0])
    assert np.all(np.abs(got - want) <= aggregator.quantization_bound * (1 + 1e-6) + np.abs(want) * 2.0**-22)
    with pytest.raises(ValueError, match="bits must be at least 2"):
        learning.SecureAggregator(bits=1)

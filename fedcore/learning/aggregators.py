"""Aggregators: how a training process combines the clients' updates at the server.

An aggregator is an object with ``aggregate(updates, weights, round_number)``,
called while the process's ``next`` is traced: ``updates`` is
``{U}@CLIENTS`` (each client's update, a struct of float tensors),
``weights`` is ``{float32}@CLIENTS`` (each client's number of examples; 0 for
a client whose update was not finite) and ``round_number`` is
``int64@SERVER`` (the server optimizer's step count: rounds applied so far).
It returns the combined update, ``U@SERVER``.  Everything here is written
with the public core (``federated_*`` intrinsics and ``tf_computation``), so it
runs on any executor.

* :class:`MeanAggregator`: the weighted mean, ``federated_mean`` (the default).
* :class:`SecureAggregator`: the weighted mean through ``federated_secure_sum``
  (pairwise masking): the server never sees one client's update.
* :class:`DPAggregator`: DP-FedAvg's clipped, noised, unweighted mean.
"""

from __future__ import annotations

import abc
import collections
import math
import numbers
import secrets
from typing import Any, List, Optional

import numpy as np
import tensorflow as tf

from fedcore.compiler.computation import tf_computation
from fedcore.compiler.federated_api import federated_map, federated_mean, federated_secure_sum, federated_sum, federated_zip
from fedcore.learning import _nest
from fedcore.learning.model_functions import field
from fedcore.structure import build_container
from fedcore.types import FederatedType, StructType, TensorType, Type

__all__ = ["Aggregator", "DPAggregator", "MeanAggregator", "SecureAggregator"]


class Aggregator(abc.ABC):
    """How the server combines ``{U}@CLIENTS`` updates into one ``U@SERVER``."""

    @abc.abstractmethod
    def aggregate(self, updates: Any, weights: Any, round_number: Any) -> Any:
        """Called while tracing: returns the combined update placed at the server."""


class MeanAggregator(Aggregator):
    """The mean of the updates weighted by the clients' numbers of examples (plain FedAvg)."""

    def aggregate(self, updates, weights, round_number):
        return federated_mean(updates, weight=weights)

    def __repr__(self) -> str:
        return "MeanAggregator()"


def _member(value: Any, what: str) -> Type:
    t = value.type_signature
    if not isinstance(t, FederatedType):
        raise TypeError(f"{what} must be a federated value, got a value of type {t}")
    return t.member


def _tensor_types(t: Type) -> List[TensorType]:
    """The tensor leaves of an update's type, in order; TypeError for anything but float tensors."""
    if isinstance(t, StructType):
        return [leaf for e in t for leaf in _tensor_types(e)]
    if isinstance(t, TensorType) and t.dtype.startswith(("float", "bfloat")):
        if t.shape is None or any(d is None for d in t.shape):
            raise TypeError(f"an aggregator needs updates of fully known shapes, got {t}")
        return [t]
    raise TypeError(f"an aggregator needs updates made of floating-point tensors, got {t}")


def _all_finite(leaves: List[tf.Tensor]) -> tf.Tensor:
    checks = [tf.reduce_all(tf.math.is_finite(x)) for x in leaves]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _check_positive(name: str, value: Any, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite {'integer' if integer else 'number'}, got {value!r}")


# A float64 draw of tf.random.stateless_normal is below ~8.6 standard deviations in magnitude (Box-Muller
# on 53-bit uniforms); 10 bounds the noise that DPAggregator adds.
_NOISE_TAIL = 10.0


def _finfo(dtype: Any):
    try:
        return np.finfo(dtype)
    except (TypeError, ValueError):  # bfloat16 and other ml_dtypes types
        import ml_dtypes

        return ml_dtypes.finfo(dtype)


def _narrowest(leaf_types: List[TensorType]):
    """The float type of the update with the smallest range (the one that overflows first)."""
    infos = [_finfo(t.tf_dtype.as_numpy_dtype) for t in leaf_types]
    return min(infos, key=lambda f: float(f.max)) if infos else np.finfo(np.float64)


def _fixed_point_range(bits: int, info: Any = None) -> tuple:
    """The update bounds that ``bits`` bits of fixed point (``_secure_weighted_sum``) can carry.

    One step, ``2 * bound / (2^bits - 2)``, must be a normal float64 and a normal
    number of the update's type (else it underflows); sums of up to 2^63 steps
    (the secure sum's range) must stay finite in float64; and the decoded mean,
    within a step of ``[-bound, bound]``, must fit the update's type.
    """
    steps = 2**bits - 2
    f64 = np.finfo(np.float64)
    info = f64 if info is None else info
    lo = max(float(f64.tiny), float(info.tiny)) * steps / 2
    hi = min(float(f64.max) / 2.0**64 * steps, float(info.max) / (steps + 1) * steps)
    return lo, hi


def _check_range(name: str, value: float, lo: float, hi: float, why: str) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:.4g} and {hi:.4g} {why}, got {value!r}")


def _secure_weighted_sum(updates, weights, update_type: Type, update_bound: float, max_weight: int, bits: int):
    """``<total=sum_i c_i * u_i (float64 leaves), weight=sum_i c_i>@SERVER`` through federated_secure_sum.

    Each client clips every coordinate of its update to ``[-update_bound,
    update_bound]``, encodes it as a fixed-point integer ``q`` in ``[0, L]``
    (``L = 2^bits - 2`` steps of ``2 * update_bound / L``; zero is ``q = L / 2``,
    exactly, so a zero update adds nothing) and its weight as an integer ``c``
    in ``[0, max_weight]`` (rounded; 0 if the update is not finite), and sends
    ``c * q`` and ``c``.  The server takes the shift out in integers and
    decodes; each coordinate of ``total / weight`` is within
    ``update_bound / L`` of the weighted mean of the clipped updates.
    """
    _tensor_types(update_type)  # float tensors of known shapes, or a TypeError now
    levels = 2**bits - 2  # an even number of steps: zero is a code, L / 2
    half = levels // 2
    step = update_bound / half  # the value of one fixed-point unit
    weight_type = _member(weights, "weights")

    @tf_computation(update_type, weight_type)
    def encode(update, weight):
        leaves = [tf.cast(x, tf.float64) for x in _nest.flatten(update)]
        finite = tf.logical_and(_all_finite(leaves), tf.math.is_finite(tf.cast(weight, tf.float64)))
        w = tf.where(finite, tf.cast(weight, tf.float64), tf.constant(0.0, tf.float64))
        code = tf.cast(tf.round(tf.clip_by_value(w, 0.0, float(max_weight))), tf.int64)

        def fixed_point(x):
            x = tf.where(finite, x, tf.zeros_like(x))  # never cast NaN or inf to an integer
            q = tf.round(tf.clip_by_value(x, -update_bound, update_bound) / step) + float(half)
            return code * tf.cast(tf.clip_by_value(q, 0.0, float(levels)), tf.int64)

        return collections.OrderedDict(values=_nest.pack_as(update, [fixed_point(x) for x in leaves]), weight=code)

    encoded = federated_map(encode, federated_zip([updates, weights]))
    summed = federated_secure_sum(encoded, np.int64(max_weight * levels))

    @tf_computation(summed.type_signature.member)
    def decode(total):
        codes = field(total, "weight")
        # sum_i c_i * (q_i - L/2) is exact in int64 (zero updates give exactly zero); times step, sum_i c_i * u_i.
        values = [tf.cast(v - half * codes, tf.float64) * step for v in _nest.flatten(field(total, "values"))]
        return collections.OrderedDict(total=values, weight=tf.cast(codes, tf.float64))

    return federated_map(decode, summed)


def _as_update(leaves: List[tf.Tensor], template_type: Type, leaf_types: List[TensorType]) -> Any:
    """Leaves cast to the update's dtypes, in the update's structure (from its type)."""
    it = iter([tf.cast(x, t.tf_dtype) for x, t in zip(leaves, leaf_types)])

    def build(t):
        if isinstance(t, StructType):
            return build_container(t.container, [(n, build(e)) for n, e in t.elements])
        return next(it)

    return build(template_type)


class SecureAggregator(Aggregator):
    """The weighted mean of the updates, summed with ``federated_secure_sum`` (pairwise masking).

    Each client clips every coordinate of its update to ``[-update_bound,
    update_bound]``, encodes it with ``bits`` bits of fixed point, multiplies
    it by its weight rounded to a whole number and capped at ``max_weight``
    (numbers of examples are whole numbers: they are exact), and the server
    gets only the sum.  Each coordinate of the result is within
    ``update_bound / (2^bits - 2)`` of the weighted mean of the clipped
    updates.  A client whose update is not finite contributes nothing.
    ``num_clients * max_weight * (2^bits - 1)`` must be below 2^63.
    ``update_bound`` must lie in the range the encoding carries: one step
    ``2 * update_bound / (2^bits - 2)`` a normal number, and the decoded mean
    finite, in float64 and in the update's dtype (for float32 updates and
    ``bits=20``, about 1.2e-32 to 3.4e38); outside it is a ValueError.
    """

    def __init__(self, update_bound: float = 1.0, max_weight: int = 100_000, bits: int = 20):
        _check_positive("update_bound", update_bound)
        _check_positive("max_weight", max_weight, integer=True)
        _check_positive("bits", bits, integer=True)
        if bits < 2:
            raise ValueError(f"bits must be at least 2 (zero needs a fixed-point code of its own), got {bits}")
        if bits > 40 or max_weight * (2**bits - 1) >= 2**62:
            raise ValueError(
                f"bits={bits} and max_weight={max_weight} give encoded values up to {max_weight * (2**bits - 1)}, "
                "too large for 64-bit secure summation; use bits <= 40 and max_weight * 2^bits < 2^62"
            )
        _check_range("update_bound", float(update_bound), *_fixed_point_range(int(bits)),
                     f"with bits={bits} (one fixed-point step, 2*update_bound/(2^bits-2), must be a normal float64 "
                     "and sums of up to 2^63 steps must stay finite)")
        self.update_bound = float(update_bound)
        self.max_weight = int(max_weight)
        self.bits = int(bits)

    def __repr__(self) -> str:
        return f"SecureAggregator(update_bound={self.update_bound}, max_weight={self.max_weight}, bits={self.bits})"

    @property
    def quantization_bound(self) -> float:
        """The largest difference, per coordinate, from the weighted mean of the clipped updates."""
        return self.update_bound / (2**self.bits - 2)

    def aggregate(self, updates, weights, round_number):
        update_type = _member(updates, "updates")
        leaf_types = _tensor_types(update_type)
        info = _narrowest(leaf_types)
        _check_range("update_bound", self.update_bound, *_fixed_point_range(self.bits, info),
                     f"for {info.dtype} updates with bits={self.bits} (one fixed-point step must be a normal "
                     f"{info.dtype} number and the decoded mean must fit {info.dtype})")
        sums = _secure_weighted_sum(updates, weights, update_type, self.update_bound, self.max_weight, self.bits)

        @tf_computation(sums.type_signature.member)
        def mean(sums):
            weight = field(sums, "weight")
            # No weight at all (no client, or only diverged ones): NaN, as federated_mean gives.
            return _as_update([t / weight for t in _nest.flatten(field(sums, "total"))], update_type, leaf_types)

        return federated_map(mean, sums)


class DPAggregator(Aggregator):
    """DP-FedAvg (McMahan et al., 2018): clipped updates, Gaussian noise, unweighted mean.

    Each client scales its update (all tensors together) so that its L2 norm
    is at most ``clip_norm``; the server adds Gaussian noise of standard
    deviation ``noise_multiplier * clip_norm`` to every coordinate of the sum
    of the clipped updates, and divides by the number of participating
    clients (those with a positive weight and a finite update), so the mean's
    noise has standard deviation ``noise_multiplier * clip_norm / count``.
    Clients are weighted equally: one client changes the sum by at most
    ``clip_norm``.  The noise is drawn from a stateless generator seeded with
    ``(seed, round_number)``: reproducible for a given ``seed`` and different
    every round (``seed=None`` draws one at construction).  With
    ``secure=True`` the clipped updates are summed with ``federated_secure_sum``
    (``bits`` bits of fixed point; the server never sees one client's update)
    before the noise is added.  The count of clients is not made private.
    With ``denominator`` set, the noisy sum is divided by it instead of the
    count (the expected number of clients per round, as TFF's
    ``DifferentiallyPrivateFactory.gaussian_fixed`` does), so the count is not used.
    ``clip_norm`` must keep the noisy mean, up to ``clip_norm * (1 + 10 *
    noise_multiplier)``, finite in the update's dtype, and ``clip_norm /
    sqrt(number of coordinates)`` above its smallest normal number (with
    ``secure=True`` also in ``SecureAggregator``'s fixed-point range); outside
    that range it is a ValueError when the process is built.
    """

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float,
        seed: Optional[int] = None,
        secure: bool = False,
        bits: int = 20,
        *,
        denominator: Optional[float] = None,
    ):
        if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, numbers.Real) or not (
            math.isfinite(noise_multiplier) and noise_multiplier >= 0
        ):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        _check_positive("clip_norm", clip_norm)
        if seed is None:
            seed = secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
        if not isinstance(secure, bool):
            raise TypeError(f"secure must be True or False, got {secure!r}")
        _check_positive("bits", bits, integer=True)
        if bits < 2:
            raise ValueError(f"bits must be at least 2 (zero needs a fixed-point code of its own), got {bits}")
        if bits > 40:
            raise ValueError(f"bits must be at most 40, got {bits}")
        _check_range("clip_norm", float(clip_norm), 0.0, float(np.finfo(np.float64).max) / (1 + _NOISE_TAIL * noise_multiplier),
                     f"with noise_multiplier={noise_multiplier} (clip_norm * (1 + {_NOISE_TAIL:g} * noise_multiplier), "
                     "the largest noisy mean, must be a finite float64)")
        if secure:
            _check_range("clip_norm", float(clip_norm), *_fixed_point_range(int(bits)),
                         f"with secure=True and bits={bits} (one fixed-point step, 2*clip_norm/(2^bits-2), must be a "
                         "normal float64 and sums of up to 2^63 steps must stay finite)")
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.seed = int(seed)
        self.secure = secure
        self.bits = int(bits)
        if denominator is not None:
            _check_positive("denominator", denominator)
            denominator = float(denominator)
        self.denominator = denominator

    def __repr__(self) -> str:
        return (
            f"DPAggregator(noise_multiplier={self.noise_multiplier}, clip_norm={self.clip_norm}, "
            f"seed={self.seed}, secure={self.secure}"
            + ("" if self.denominator is None else f", denominator={self.denominator}")
            + ")"
        )

    @property
    def noise_stddev(self) -> float:
        """The standard deviation of the noise added to each coordinate of the sum."""
        return self.noise_multiplier * self.clip_norm

    def aggregate(self, updates, weights, round_number):
        update_type = _member(updates, "updates")
        leaf_types = _tensor_types(update_type)
        weight_type = _member(weights, "weights")
        clip_norm = self.clip_norm
        info = _narrowest(leaf_types)
        coordinates = max(1, sum(math.prod(t.shape) for t in leaf_types))
        lo, hi = float(info.tiny) * math.sqrt(coordinates), float(info.max) / (1 + _NOISE_TAIL * self.noise_multiplier)
        if self.secure:
            secure_lo, secure_hi = _fixed_point_range(self.bits, info)
            lo, hi = max(lo, secure_lo), min(hi, secure_hi)
        _check_range("clip_norm", clip_norm, lo, hi,
                     f"for {info.dtype} updates of {coordinates} coordinates with noise_multiplier="
                     f"{self.noise_multiplier}{f' and secure=True, bits={self.bits}' if self.secure else ''} (the "
                     f"noisy mean, up to clip_norm * (1 + {_NOISE_TAIL:g} * noise_multiplier), must fit {info.dtype}, "
                     f"and a clipped update's coordinates, about clip_norm / sqrt({coordinates}), must not underflow)")

        @tf_computation(update_type, weight_type)
        def clip(update, weight):
            leaves = [tf.cast(x, tf.float64) for x in _nest.flatten(update)]
            finite = tf.logical_and(_all_finite(leaves), tf.math.is_finite(tf.cast(weight, tf.float64)))
            participating = tf.logical_and(finite, tf.cast(weight, tf.float64) > 0.0)
            leaves = [tf.where(participating, x, tf.zeros_like(x)) for x in leaves]
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(x)) for x in leaves])) if leaves else tf.constant(0.0, tf.float64)
            scale = tf.minimum(tf.constant(1.0, tf.float64), clip_norm / tf.maximum(norm, 1e-300))
            return collections.OrderedDict(
                update=_as_update([x * scale for x in leaves], update_type, leaf_types),
                participating=tf.cast(participating, tf.float32),
            )

        clipped = federated_map(clip, federated_zip([updates, weights]))
        if self.secure:
            # Coordinates of a clipped update lie in [-clip_norm, clip_norm]; weights are 0 or 1.
            sums = _secure_weighted_sum(
                clipped.update, clipped.participating, update_type, clip_norm, 1, self.bits
            )
        else:
            sums = federated_zip(
                collections.OrderedDict(total=federated_sum(clipped.update), weight=federated_sum(clipped.participating))
            )
        sizes = [math.prod(t.shape) for t in leaf_types]
        stddev, seed, denominator = self.noise_stddev, self.seed, self.denominator

        @tf_computation(sums.type_signature.member, round_number.type_signature.member)
        def add_noise(sums, round_number):
            totals = [tf.cast(t, tf.float64) for t in _nest.flatten(field(sums, "total"))]
            count = tf.cast(field(sums, "weight"), tf.float64)
            if denominator is not None:
                count = tf.constant(denominator, tf.float64)
            key = tf.stack([tf.constant(seed, tf.int64), tf.cast(round_number, tf.int64)])
            noise = tf.random.stateless_normal([sum(sizes)], seed=key, stddev=stddev, dtype=tf.float64)
            noisy, start = [], 0
            for t, size in zip(totals, sizes):
                noisy.append((t + tf.reshape(noise[start : start + size], tf.shape(t))) / count)
                start += size
            # No participating client: NaN, as federated_mean gives for no weight.
            return _as_update(noisy, update_type, leaf_types)

        return federated_map(add_noise, federated_zip([sums, round_number]))


def resolve(aggregator: Optional[Aggregator], secure: bool) -> Optional[Aggregator]:
    """The aggregator a process uses given its ``aggregator`` and ``secure`` arguments (None: the weighted mean)."""
    if not isinstance(secure, bool):
        raise TypeError(f"secure must be True or False, got {secure!r}")
    if aggregator is not None and not isinstance(aggregator, Aggregator):
        raise TypeError(
            "aggregator must be a fedcore.learning.Aggregator (MeanAggregator, SecureAggregator or DPAggregator), "
            f"got {aggregator!r}"
        )
    if not secure:
        return aggregator
    if aggregator is None:
        return SecureAggregator()
    if isinstance(aggregator, SecureAggregator) or (isinstance(aggregator, DPAggregator) and aggregator.secure):
        return aggregator
    raise ValueError(
        f"secure=True cannot be combined with {aggregator!r}, which does not sum securely; "
        "pass SecureAggregator(...) or DPAggregator(..., secure=True) instead"
    )

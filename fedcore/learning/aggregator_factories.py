"""TFF's aggregation factories (``tff.aggregators``) as fedcore aggregators.

A factory describes how a training process combines the clients' model
updates; :meth:`AggregationFactory.to_aggregator` gives the
``fedcore.learning.aggregators.Aggregator`` that does it, which is what
``model_aggregator=`` of ``fedcore.learning.algorithms.build_weighted_fed_avg``
uses.  The factories fedcore has a meaning for:

* ``MeanFactory()``: the mean weighted by the clients' numbers of examples;
  with ``value_sum_factory=SecureSumFactory(bound)`` summed with
  ``federated_secure_sum`` (``SecureAggregator``); ``no_nan_division=True``
  gives zeros instead of NaN when the weights sum to zero.
* ``SumFactory()``: the plain sum of the updates.
* ``SecureSumFactory(upper, lower=None)``: the sum of the updates, each
  coordinate clipped to ``[lower, upper]`` (``lower`` defaults to
  ``-upper``), through ``federated_secure_sum`` with 20 bits of fixed point.
* ``DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier,
  clients_per_round, clip)``: DP-FedAvg's clipped sum with Gaussian noise
  divided by ``clients_per_round`` (``DPAggregator``).

A weighted factory (``MeanFactory``) uses the clients' weights; an
unweighted one (the others) ignores them, as TFF's do.
"""

from __future__ import annotations

import abc
import collections
import math
import numbers
from typing import Any, Optional

import tensorflow as tf

from fedcore.compiler.computation import tf_computation
from fedcore.compiler.federated_api import federated_map, federated_mean, federated_sum, federated_zip
from fedcore.learning import _nest
from fedcore.learning import aggregators as aggregators_lib
from fedcore.learning.model_functions import field

__all__ = [
    "AggregationFactory",
    "DifferentiallyPrivateFactory",
    "MeanFactory",
    "SecureSumFactory",
    "SumFactory",
    "UnweightedAggregationFactory",
    "WeightedAggregationFactory",
    "resolve",
]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class AggregationFactory(abc.ABC):
    """Base of the factories: each turns into a ``fedcore.learning.aggregators.Aggregator``."""

    @abc.abstractmethod
    def to_aggregator(self) -> aggregators_lib.Aggregator:
        """The aggregator that combines ``{U}@CLIENTS`` updates as this factory says."""


class WeightedAggregationFactory(AggregationFactory):
    """A factory whose aggregation uses the clients' weights."""


class UnweightedAggregationFactory(AggregationFactory):
    """A factory whose aggregation ignores the clients' weights."""


class SumAggregator(aggregators_lib.Aggregator):
    """The sum of the updates (``federated_sum``); the weights are not used."""

    def aggregate(self, updates, weights, round_number):
        return federated_sum(updates)

    def __repr__(self) -> str:
        return "SumAggregator()"


class SecureSumAggregator(aggregators_lib.Aggregator):
    """The sum of the updates clipped to ``[lower, upper]``, through ``federated_secure_sum``.

    Every coordinate is encoded with ``bits`` bits of fixed point over
    ``[-bound, bound]``, ``bound = max(|lower|, |upper|)``: each coordinate of
    the sum is within ``bound / (2^bits - 1)`` of the sum of the clipped
    updates per client.  A client whose update is not finite adds nothing.
    """

    def __init__(self, upper: float, lower: float, bits: int = 20):
        self.upper, self.lower, self.bits = float(upper), float(lower), int(bits)

    def __repr__(self) -> str:
        return f"SecureSumAggregator(upper={self.upper}, lower={self.lower}, bits={self.bits})"

    def aggregate(self, updates, weights, round_number):
        update_type = aggregators_lib._member(updates, "updates")
        leaf_types = aggregators_lib._tensor_types(update_type)
        weight_type = aggregators_lib._member(weights, "weights")
        upper, lower = self.upper, self.lower

        @tf_computation(update_type, weight_type)
        def clip(update, weight):
            leaves = [tf.clip_by_value(x, lower, upper) for x in _nest.flatten(update)]
            # Every finite client counts once; weight 0 marks a client whose update was not finite.
            count = tf.where(tf.math.is_finite(tf.cast(weight, tf.float32)) & (weight > 0), 1.0, 0.0)
            return collections.OrderedDict(update=aggregators_lib._as_update(leaves, update_type, leaf_types), count=count)

        clipped = federated_map(clip, federated_zip([updates, weights]))
        bound = max(abs(lower), abs(upper))
        sums = aggregators_lib._secure_weighted_sum(clipped.update, clipped.count, update_type, bound, 1, self.bits)

        @tf_computation(sums.type_signature.member)
        def total(sums):
            return aggregators_lib._as_update(list(_nest.flatten(field(sums, "total"))), update_type, leaf_types)

        return federated_map(total, sums)


class _NoNanMean(aggregators_lib.Aggregator):
    """The weighted mean, with zeros where the weights sum to zero (instead of NaN)."""

    def aggregate(self, updates, weights, round_number):
        mean = federated_mean(updates, weight=weights)
        total = federated_sum(weights)

        @tf_computation(mean.type_signature.member, total.type_signature.member)
        def zero_if_no_weight(mean, total):
            return _nest.map_structure(lambda x: tf.where(total > 0, x, tf.zeros_like(x)), mean)

        return federated_map(zero_if_no_weight, federated_zip([mean, total]))

    def __repr__(self) -> str:
        return "MeanAggregator(no_nan_division=True)"


class UniformWeighting(aggregators_lib.Aggregator):
    """``inner`` with every participating client weighted 1 (TFF's ``ClientWeighting.UNIFORM``).

    A client of weight 0 (no examples, or an update that was not finite) keeps weight 0.
    """

    def __init__(self, inner: Optional[aggregators_lib.Aggregator]):
        self.inner = inner or aggregators_lib.MeanAggregator()

    def __repr__(self) -> str:
        return f"UniformWeighting({self.inner!r})"

    def aggregate(self, updates, weights, round_number):
        @tf_computation(aggregators_lib._member(weights, "weights"))
        def uniform(weight):
            return tf.where(weight > 0, tf.ones_like(weight), tf.zeros_like(weight))

        return self.inner.aggregate(updates, federated_map(uniform, weights), round_number)


class SumFactory(UnweightedAggregationFactory):
    """TFF's ``tff.aggregators.SumFactory()``: the sum of the updates."""

    def to_aggregator(self) -> aggregators_lib.Aggregator:
        return SumAggregator()

    def __repr__(self) -> str:
        return "SumFactory()"


class SecureSumFactory(UnweightedAggregationFactory):
    """TFF's ``tff.aggregators.SecureSumFactory(upper_bound_threshold, lower_bound_threshold=None)``.

    The thresholds are numbers (TFF's estimation processes are not
    supported); ``lower_bound_threshold`` defaults to ``-upper_bound_threshold``.
    """

    def __init__(self, upper_bound_threshold: float, lower_bound_threshold: Optional[float] = None):
        upper = _number("upper_bound_threshold", upper_bound_threshold)
        lower = -upper if lower_bound_threshold is None else _number("lower_bound_threshold", lower_bound_threshold)
        if not lower < upper:
            raise ValueError(
                f"lower_bound_threshold must be below upper_bound_threshold, got {lower} and {upper}"
            )
        self.upper_bound_threshold = upper
        self.lower_bound_threshold = lower

    def __repr__(self) -> str:
        return f"SecureSumFactory({self.upper_bound_threshold}, {self.lower_bound_threshold})"

    def to_aggregator(self) -> aggregators_lib.Aggregator:
        return SecureSumAggregator(self.upper_bound_threshold, self.lower_bound_threshold)


class MeanFactory(WeightedAggregationFactory):
    """TFF's ``tff.aggregators.MeanFactory(value_sum_factory=None, weight_sum_factory=None, no_nan_division=False)``.

    ``value_sum_factory`` is None, a ``SumFactory`` or a ``SecureSumFactory``
    with ``lower = -upper`` (the weighted mean through secure summation,
    ``SecureAggregator(update_bound=upper)``); ``weight_sum_factory`` is None,
    a ``SumFactory`` or, with a secure value sum, a ``SecureSumFactory(W, 0)``
    whose integer ``W`` caps each client's weight (default 100000).
    """

    def __init__(self, value_sum_factory=None, weight_sum_factory=None, no_nan_division: bool = False):
        for name, f in (("value_sum_factory", value_sum_factory), ("weight_sum_factory", weight_sum_factory)):
            if f is not None and not isinstance(f, (SumFactory, SecureSumFactory)):
                raise TypeError(f"{name} must be None, a SumFactory or a SecureSumFactory, got {f!r}")
        if not isinstance(no_nan_division, bool):
            raise TypeError(f"no_nan_division must be True or False, got {no_nan_division!r}")
        secure_value = isinstance(value_sum_factory, SecureSumFactory)
        secure_weight = isinstance(weight_sum_factory, SecureSumFactory)
        if secure_weight and not secure_value:
            raise ValueError(
                "fedcore sums a secure mean's values and weights together: with a SecureSumFactory as "
                "weight_sum_factory, make value_sum_factory a SecureSumFactory too"
            )
        if secure_value:
            if value_sum_factory.lower_bound_threshold != -value_sum_factory.upper_bound_threshold:
                raise ValueError(
                    "fedcore's secure mean clips every coordinate to [-bound, bound]: give value_sum_factory "
                    f"a symmetric range, got {value_sum_factory!r}"
                )
            if no_nan_division:
                raise ValueError("no_nan_division=True is not supported with a secure value_sum_factory")
        if secure_weight:
            upper = weight_sum_factory.upper_bound_threshold
            if weight_sum_factory.lower_bound_threshold != 0 or upper != int(upper) or upper < 1:
                raise ValueError(
                    "weight_sum_factory must be SecureSumFactory(W, 0) with a positive integer W, the largest "
                    f"weight of a client, got {weight_sum_factory!r}"
                )
        self.value_sum_factory = value_sum_factory
        self.weight_sum_factory = weight_sum_factory
        self.no_nan_division = no_nan_division

    def __repr__(self) -> str:
        return (
            f"MeanFactory(value_sum_factory={self.value_sum_factory!r}, "
            f"weight_sum_factory={self.weight_sum_factory!r}, no_nan_division={self.no_nan_division})"
        )

    def to_aggregator(self) -> aggregators_lib.Aggregator:
        if isinstance(self.value_sum_factory, SecureSumFactory):
            max_weight = 100_000
            if isinstance(self.weight_sum_factory, SecureSumFactory):
                max_weight = int(self.weight_sum_factory.upper_bound_threshold)
            return aggregators_lib.SecureAggregator(
                update_bound=self.value_sum_factory.upper_bound_threshold, max_weight=max_weight
            )
        if self.no_nan_division:
            return _NoNanMean()
        return aggregators_lib.MeanAggregator()


class DifferentiallyPrivateFactory(UnweightedAggregationFactory):
    """TFF's ``tff.aggregators.DifferentiallyPrivateFactory``, made with :meth:`gaussian_fixed`.

    fedcore has no TensorFlow Privacy queries: the constructor taking a
    ``DPQuery`` and ``gaussian_adaptive`` are not supported.
    """

    def __init__(self, query: Any, record_aggregation_factory: Any = None):
        if not isinstance(query, _GaussianFixed):
            raise TypeError(
                "fedcore has no TensorFlow Privacy DPQuery; make the factory with "
                "DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier, clients_per_round, clip)"
            )
        if record_aggregation_factory is not None:
            raise ValueError("record_aggregation_factory is not supported; the clipped updates are summed with federated_sum")
        self._query = query

    @classmethod
    def gaussian_fixed(cls, noise_multiplier: float, clients_per_round: float, clip: float) -> "DifferentiallyPrivateFactory":
        """Clips each update to L2 norm ``clip``, adds Gaussian noise of standard deviation
        ``noise_multiplier * clip`` to the sum and divides it by ``clients_per_round``."""
        noise_multiplier = _number("noise_multiplier", noise_multiplier)
        clients_per_round = _number("clients_per_round", clients_per_round)
        clip = _number("clip", clip)
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if clients_per_round <= 0:
            raise ValueError(f"clients_per_round must be positive, got {clients_per_round}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        return cls(_GaussianFixed(noise_multiplier, clients_per_round, clip))

    @property
    def noise_multiplier(self) -> float:
        return self._query.noise_multiplier

    @property
    def clients_per_round(self) -> float:
        return self._query.clients_per_round

    @property
    def clip(self) -> float:
        return self._query.clip

    def __repr__(self) -> str:
        q = self._query
        return (
            f"DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier={q.noise_multiplier}, "
            f"clients_per_round={q.clients_per_round}, clip={q.clip})"
        )

    def to_aggregator(self) -> aggregators_lib.Aggregator:
        q = self._query
        return aggregators_lib.DPAggregator(q.noise_multiplier, q.clip, denominator=q.clients_per_round)


_GaussianFixed = collections.namedtuple("_GaussianFixed", ["noise_multiplier", "clients_per_round", "clip"])


def resolve(model_aggregator: Any) -> Optional[aggregators_lib.Aggregator]:
    """The aggregator for ``model_aggregator``: a factory here, a fedcore Aggregator, or None (the weighted mean)."""
    if model_aggregator is None or isinstance(model_aggregator, aggregators_lib.Aggregator):
        return model_aggregator
    if isinstance(model_aggregator, AggregationFactory):
        return model_aggregator.to_aggregator()
    raise TypeError(
        "model_aggregator must be a fedcore.aggregators factory (MeanFactory, SumFactory, SecureSumFactory, "
        f"DifferentiallyPrivateFactory.gaussian_fixed(...)) or a fedcore.learning.Aggregator, got {model_aggregator!r}"
    )

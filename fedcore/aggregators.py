"""TFF's ``tff.aggregators`` factories, as far as fedcore gives them a meaning.

Each factory is given as ``model_aggregator=`` to
``fedcore.learning.algorithms.build_weighted_fed_avg`` (or
``build_unweighted_fed_avg``) and turns into one of
``fedcore.learning.aggregators``' aggregators; see
``fedcore.learning.aggregator_factories``.
"""

from fedcore.learning import aggregator_factories as _factories
from fedcore.learning.aggregator_factories import (  # noqa: F401
    AggregationFactory,
    DifferentiallyPrivateFactory,
    MeanFactory,
    SecureSumFactory,
    SumFactory,
    UnweightedAggregationFactory,
    WeightedAggregationFactory,
)

__all__ = [name for name in _factories.__all__ if name != "resolve"]

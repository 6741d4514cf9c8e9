"""TFF's ``tff.learning.models`` names over fedcore's models (``fedcore.learning.keras_utils``, ``model``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from fedcore.learning import keras_utils
from fedcore.learning.model import ModelWeights

__all__ = ["ModelWeights", "from_keras_model"]


def from_keras_model(
    keras_model: Any,
    loss: Any,
    input_spec: Any,
    loss_weights: Optional[Sequence[float]] = None,
    metrics: Optional[Sequence[Any]] = None,
    metrics_aggregator: Any = None,
) -> keras_utils.KerasModel:
    """TFF's ``from_keras_model``: ``fedcore.learning.from_keras_model(keras_model, loss, input_spec, metrics)``.

    The model has one loss: ``loss`` is a loss or a list of one loss, and
    ``loss_weights`` is None or a list of one weight, which must be 1.0
    (scale the loss function to weigh it).  ``metrics_aggregator`` must be
    None: the metrics are aggregated as ``fedcore.learning.from_keras_model``
    does (summed over the clients' examples, then finalized).
    """
    if isinstance(loss, (list, tuple)):
        if len(loss) != 1:
            raise ValueError(
                f"fedcore's Keras models have one loss, got {len(loss)} losses; combine them in one loss function"
            )
        loss = loss[0]
    if loss_weights is not None:
        weights = list(loss_weights) if isinstance(loss_weights, (list, tuple)) else [loss_weights]
        if len(weights) != 1 or weights[0] != 1.0:
            raise ValueError(
                f"loss_weights must be None or [1.0] for fedcore's single loss, got {loss_weights!r}; "
                "scale the loss function instead"
            )
    if metrics_aggregator is not None:
        raise ValueError(
            "metrics_aggregator is not supported: fedcore aggregates a Keras model's metrics over the clients' "
            "examples itself; leave it None"
        )
    return keras_utils.from_keras_model(keras_model, loss, input_spec, metrics=metrics)

"""TFF's ``tff.backends.mapreduce`` names for fedcore's forms (``fedcore.compiler.forms``)."""

from __future__ import annotations

from typing import Any

from fedcore.compiler.forms import (
    DistributeAggregateForm,
    MapReduceForm,
    to_distribute_aggregate_form,
    to_map_reduce_form,
)

__all__ = [
    "DistributeAggregateForm",
    "MapReduceForm",
    "get_distribute_aggregate_form_for_computation",
    "get_map_reduce_form_for_computation",
]


def get_map_reduce_form_for_computation(comp: Any, grappler_config: Any = None) -> MapReduceForm:
    """``fedcore.compiler.to_map_reduce_form(comp)``; TFF's ``grappler_config`` (graph optimization) is not used."""
    return to_map_reduce_form(comp)


def get_distribute_aggregate_form_for_computation(comp: Any) -> DistributeAggregateForm:
    """``fedcore.compiler.to_distribute_aggregate_form(comp)``."""
    return to_distribute_aggregate_form(comp)

"""The compiler: IR building blocks, the intrinsic registry, tracing and type checking."""

from fedcore.compiler import building_blocks, intrinsics
from fedcore.compiler.computation import (
    Computation,
    PolymorphicComputation,
    federated_computation,
    tf_computation,
    with_masked_form,
)
from fedcore.compiler.context import FederatedTypeError

__all__ = [
    "Computation",
    "FederatedTypeError",
    "PolymorphicComputation",
    "building_blocks",
    "federated_computation",
    "intrinsics",
    "tf_computation",
    "to_distribute_aggregate_form",
    "to_map_reduce_form",
    "with_masked_form",
]

# The forms (``fedcore.compiler.forms``) sit above the front end; they are loaded on first use.
_FORMS = ("DistributeAggregateForm", "MapReduceForm", "to_distribute_aggregate_form", "to_map_reduce_form")


def __getattr__(name):
    if name in _FORMS:
        from fedcore.compiler import forms

        return getattr(forms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The compiler: IR building blocks, the intrinsic registry, tracing and type checking."""

from fedcore.compiler import building_blocks, intrinsics
from fedcore.compiler.computation import (
    Computation,
    PolymorphicComputation,
    federated_computation,
    tf_computation,
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
]

"""The federated type system: type values, their notation, and their relations."""

from fedcore.types.convert import to_type
from fedcore.types.core import (
    CLIENTS,
    DTYPE_NAMES,
    SERVER,
    AbstractType,
    FederatedType,
    FunctionType,
    Placement,
    PlacementType,
    SequenceType,
    StructType,
    StructWithPythonType,
    TensorType,
    Type,
    at_clients,
    at_server,
    to_placement,
    type_at_clients,
    type_at_server,
)
from fedcore.types.core import MAX_DEPTH, TypeNestingError  # the deepest a type may nest
from fedcore.types.parser import parse
from fedcore.types.printing import format_type
from fedcore.types.relations import (
    UnificationError,
    is_assignable_from,
    is_equivalent_to,
    substitute,
    unify,
)

__all__ = [
    "MAX_DEPTH",
    "TypeNestingError",
    "AbstractType",
    "CLIENTS",
    "DTYPE_NAMES",
    "FederatedType",
    "FunctionType",
    "Placement",
    "PlacementType",
    "SERVER",
    "SequenceType",
    "StructType",
    "StructWithPythonType",
    "TensorType",
    "Type",
    "UnificationError",
    "at_clients",
    "at_server",
    "format_type",
    "is_assignable_from",
    "is_equivalent_to",
    "parse",
    "substitute",
    "to_placement",
    "to_type",
    "type_at_clients",
    "type_at_server",
    "unify",
]

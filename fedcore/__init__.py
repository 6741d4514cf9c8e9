"""fedcore: typed federated computations, traced, checked, compiled and run."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

# The public names, by the module that defines them.  ``import fedcore`` alone imports none of them
# (so that ``fedcore --help`` does not wait for TensorFlow): the first use of any of them imports all
# these modules, in this order, as an eager ``import fedcore`` would (``fedcore.runtime`` installs the
# default execution context when it is imported).
_EXPORTS = {
    "fedcore.types": (
        "CLIENTS", "SERVER", "AbstractType", "FederatedType", "FunctionType", "PlacementType", "SequenceType",
        "StructType", "TensorType", "Type", "to_type", "type_at_clients", "type_at_server",
    ),
    "fedcore.structure": ("Struct",),
    "fedcore.compiler": (
        "Computation", "FederatedTypeError", "PolymorphicComputation", "federated_computation", "tf_computation",
        "with_masked_form",
    ),
    "fedcore.compiler.federated_api": (
        "federated_aggregate", "federated_apply", "federated_broadcast", "federated_eval", "federated_map",
        "federated_max", "federated_mean", "federated_min", "federated_secure_sum", "federated_sum",
        "federated_value", "federated_zip", "sequence_map", "sequence_reduce", "sequence_sum",
    ),
    "fedcore.runtime": (
        "ArgumentError", "ExecutionError", "FallbackExecutor", "ReferenceExecutor", "execution_context",
        "get_default_executor", "set_default_executor",
    ),
    "fedcore.compiler.serialization": ("deserialize", "serialize"),
}

# ``from fedcore import *`` imports these names (and so loads them).
__all__ = sorted(name for names in _EXPORTS.values() for name in names)

if TYPE_CHECKING:  # what static tools (type checkers, API reference generators) see
    from fedcore.compiler import (
        Computation,
        FederatedTypeError,
        PolymorphicComputation,
        federated_computation,
        tf_computation,
        with_masked_form,
    )
    from fedcore.compiler.federated_api import (
        federated_aggregate,
        federated_apply,
        federated_broadcast,
        federated_eval,
        federated_map,
        federated_max,
        federated_mean,
        federated_min,
        federated_secure_sum,
        federated_sum,
        federated_value,
        federated_zip,
        sequence_map,
        sequence_reduce,
        sequence_sum,
    )
    from fedcore.compiler.serialization import deserialize, serialize
    from fedcore.runtime import (
        ArgumentError,
        ExecutionError,
        FallbackExecutor,
        ReferenceExecutor,
        execution_context,
        get_default_executor,
        set_default_executor,
    )
    from fedcore.structure import Struct
    from fedcore.types import (
        CLIENTS,
        SERVER,
        AbstractType,
        FederatedType,
        FunctionType,
        PlacementType,
        SequenceType,
        StructType,
        TensorType,
        Type,
        to_type,
        type_at_clients,
        type_at_server,
    )

# Subpackages that ``import fedcore`` makes reachable as attributes (``fedcore.learning``, as
# ``tff.learning``), each imported on first use.
_SUBMODULES = ("aggregators", "backends", "learning", "simulation", "templates", "tensorflow", "utils")


def _load_exports() -> None:
    import importlib

    from fedcore._extras import require_tensorflow

    require_tensorflow()  # a clear message naming the extras, before the first TensorFlow import
    namespace = globals()
    for module_name, names in _EXPORTS.items():
        module = importlib.import_module(module_name)
        for name in names:
            namespace[name] = getattr(module, name)


def __getattr__(name):
    if name in _SUBMODULES or any(name in names for names in _EXPORTS.values()):
        _load_exports()
        if name in _SUBMODULES:
            import importlib

            return importlib.import_module(f"fedcore.{name}")
        return globals()[name]
    raise AttributeError(f"module 'fedcore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | {n for names in _EXPORTS.values() for n in names})

"""fedcore: typed federated computations, traced, checked, compiled and run."""

__version__ = "0.1.0"

from fedcore._extras import require_tensorflow as _require_tensorflow  # noqa: E402

_require_tensorflow()  # a clear message naming the extras, before the first TensorFlow import

from fedcore.types import (  # noqa: E402
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
from fedcore.structure import Struct  # noqa: E402
from fedcore.compiler import (  # noqa: E402
    Computation,
    FederatedTypeError,
    PolymorphicComputation,
    federated_computation,
    tf_computation,
)
from fedcore.compiler.federated_api import (  # noqa: E402
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
from fedcore.runtime import (  # noqa: E402
    ArgumentError,
    ExecutionError,
    FallbackExecutor,
    ReferenceExecutor,
    execution_context,
    get_default_executor,
    set_default_executor,
)
from fedcore.compiler.serialization import deserialize, serialize  # noqa: E402


# Subpackages that ``import fedcore`` makes reachable as attributes (``fedcore.learning``, as
# ``tff.learning``), each imported on first use so that ``import fedcore`` stays as fast as it was.
_SUBMODULES = ("aggregators", "backends", "learning", "simulation", "templates", "tensorflow", "utils")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"fedcore.{name}")
    raise AttributeError(f"module 'fedcore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))

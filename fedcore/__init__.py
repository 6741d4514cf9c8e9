"""fedcore: typed federated computations, traced, checked, compiled and run."""

__version__ = "0.1.0"

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
    ReferenceExecutor,
    execution_context,
    get_default_executor,
    set_default_executor,
)
from fedcore.compiler.serialization import deserialize, serialize  # noqa: E402

"""fedcore: typed federated computations, traced, checked, compiled and run."""

__version__ = "0.1.0"

from fedcore.types import (  # noqa: E402
    CLIENTS,
    SERVER,
    to_type,
    type_at_clients,
    type_at_server,
)

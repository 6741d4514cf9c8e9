"""TFF's ``tff.backends.test`` name: sets fedcore's reference interpreter, the executor to test against."""

from __future__ import annotations

from fedcore import backends as _backends
from fedcore.runtime import ReferenceExecutor

__all__ = ["set_sync_test_cpp_execution_context"]


def set_sync_test_cpp_execution_context(
    *,
    default_num_clients: int = 0,
    max_concurrent_computation_calls: int = -1,
    stream_structs: bool = False,
) -> ReferenceExecutor:
    """Sets the reference interpreter (which runs every intrinsic, the secure ones included); returns it.

    ``default_num_clients`` is the number of clients when no argument placed
    at CLIENTS says how many; 0 (the default) leaves it unknown.  The other
    two arguments tune TFF's C++ runtime and change nothing here.
    """
    _backends._check_runtime_options(max_concurrent_computation_calls, stream_structs)
    return _backends.set_reference_executor(num_clients=_backends._num_clients(default_num_clients))

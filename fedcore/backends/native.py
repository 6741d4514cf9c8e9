"""TFF's ``tff.backends.native`` names: each sets fedcore's TensorFlow executor."""

from __future__ import annotations

from fedcore import backends as _backends
from fedcore.runtime.tensorflow import TensorFlowExecutor

__all__ = ["set_local_python_execution_context", "set_sync_local_cpp_execution_context"]


def set_sync_local_cpp_execution_context(
    default_num_clients: int = 0,
    max_concurrent_computation_calls: int = -1,
    stream_structs: bool = False,
) -> TensorFlowExecutor:
    """Sets the TensorFlow executor, fedcore's fast local runtime; returns it.

    ``default_num_clients`` is the number of clients when no argument placed
    at CLIENTS says how many; 0 (the default) leaves it unknown, and such a
    computation is refused with an error.  The other two arguments tune TFF's
    C++ runtime and change nothing here.
    """
    _backends._check_runtime_options(max_concurrent_computation_calls, stream_structs)
    return _backends.set_tensorflow_executor(num_clients=_backends._num_clients(default_num_clients))


def set_local_python_execution_context(
    default_num_clients: int = 0,
    max_fanout: int = 100,
    clients_per_thread: int = 1,
    server_tf_device=None,
    client_tf_devices=(),
    reference_resolving_clients: bool = False,
) -> TensorFlowExecutor:
    """Sets the TensorFlow executor; returns it (TFF's older local runtime).

    ``default_num_clients`` is as in :func:`set_sync_local_cpp_execution_context`.
    ``max_fanout``, ``clients_per_thread`` and ``reference_resolving_clients``
    tune TFF's Python runtime and change nothing here.  Placing work on named
    devices is not supported: ``server_tf_device`` and ``client_tf_devices``
    must be left unset (TensorFlow places the executor's ops itself).
    """
    for name, value in (("max_fanout", max_fanout), ("clients_per_thread", clients_per_thread)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(reference_resolving_clients, bool):
        raise TypeError(f"reference_resolving_clients must be True or False, got {reference_resolving_clients!r}")
    if server_tf_device is not None or tuple(client_tf_devices):
        raise ValueError(
            "fedcore's TensorFlow executor does not pin work to named devices; leave server_tf_device and "
            "client_tf_devices unset (TensorFlow places the ops on the available devices)"
        )
    return _backends.set_tensorflow_executor(num_clients=_backends._num_clients(default_num_clients))

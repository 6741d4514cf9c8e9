"""Choosing the executor that runs computations called like Python functions.

fedcore's own names are :func:`set_reference_executor` (the reference
interpreter, the golden standard) and :func:`set_tensorflow_executor` (the
fast TensorFlow executor).  The submodules give TFF's names for the same
choices, so that ``tff.backends.native.set_sync_local_cpp_execution_context()``
ports by changing the package name:

* ``fedcore.backends.native``: ``set_sync_local_cpp_execution_context`` and
  ``set_local_python_execution_context`` set the TensorFlow executor;
* ``fedcore.backends.reference``: ``set_reference_context`` sets the reference
  interpreter;
* ``fedcore.backends.test``: ``set_sync_test_cpp_execution_context`` sets the
  reference interpreter, the executor tests should check against;
* ``fedcore.backends.mapreduce``: ``get_map_reduce_form_for_computation`` and
  ``get_distribute_aggregate_form_for_computation``.

Each of these calls ``fedcore.runtime.set_default_executor`` and returns the
executor it set.
"""

from __future__ import annotations

from typing import Optional

from fedcore.runtime import ReferenceExecutor, set_default_executor
from fedcore.runtime.tensorflow import TensorFlowExecutor

__all__ = ["mapreduce", "native", "reference", "set_reference_executor", "set_tensorflow_executor", "test"]


def set_reference_executor(num_clients: Optional[int] = None) -> ReferenceExecutor:
    """Runs computations on the reference interpreter from now on; returns it.

    ``num_clients`` is the number of clients when no argument placed at
    CLIENTS says how many (None: such a computation is refused).
    """
    executor = ReferenceExecutor(num_clients=num_clients)
    set_default_executor(executor)
    return executor


def set_tensorflow_executor(num_clients: Optional[int] = None, strategy: str = "auto") -> TensorFlowExecutor:
    """Runs computations on the TensorFlow executor from now on; returns it.

    ``strategy`` is ``TensorFlowExecutor``'s: 'auto', 'sequential' or 'vectorized'.
    """
    executor = TensorFlowExecutor(num_clients=num_clients, strategy=strategy)
    set_default_executor(executor)
    return executor


def _num_clients(default_num_clients) -> Optional[int]:
    """TFF's ``default_num_clients`` as fedcore's ``num_clients``.

    TFF's default 0 means "not given": fedcore then refuses a computation
    whose number of clients no argument says, instead of running it on zero
    clients.
    """
    if isinstance(default_num_clients, bool) or not isinstance(default_num_clients, int) or default_num_clients < 0:
        raise ValueError(f"default_num_clients must be a non-negative int, got {default_num_clients!r}")
    return default_num_clients or None


def _check_runtime_options(max_concurrent_computation_calls, stream_structs) -> None:
    # How TFF's C++ runtime schedules work; fedcore's executors give the same results without them.
    if isinstance(max_concurrent_computation_calls, bool) or not isinstance(max_concurrent_computation_calls, int):
        raise TypeError(f"max_concurrent_computation_calls must be an int, got {max_concurrent_computation_calls!r}")
    if not isinstance(stream_structs, bool):
        raise TypeError(f"stream_structs must be True or False, got {stream_structs!r}")


from fedcore.backends import mapreduce, native, reference, test  # noqa: E402

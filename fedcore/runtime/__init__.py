"""Executors: the reference interpreter, the TensorFlow executor and the executor protocol.

Importing this package installs the runtime below the front end: an
``ExecutionContext`` at the bottom of the context stack, running calls outside
tracing on the default executor.  Unless set, that is a ``FallbackExecutor``:
the TensorFlow executor, with the reference interpreter for the computations
it cannot run.
"""

from fedcore.runtime import execution as _execution
from fedcore.runtime.execution import (
    ExecutionContext,
    current_executor,
    execution_context,
    get_default_executor,
    set_default_executor,
)
from fedcore.runtime.executor import ExecutionError, Executor
from fedcore.runtime.fallback import FallbackExecutor
from fedcore.runtime.reference import ReferenceExecutor
from fedcore.runtime.values import ArgumentError

_execution.set_default_executor_factory(FallbackExecutor)
_execution.install()

__all__ = [
    "ArgumentError",
    "ExecutionContext",
    "ExecutionError",
    "Executor",
    "FallbackExecutor",
    "ReferenceExecutor",
    "current_executor",
    "execution_context",
    "get_default_executor",
    "set_default_executor",
    "RayExecutor",
    "TensorFlowExecutor",
]


def __getattr__(name):
    # RayExecutor is imported on first use, so that fedcore works without the ray extra;
    # TensorFlowExecutor on first use too, so that importing fedcore does not build the TF backend.
    if name == "RayExecutor":
        from fedcore.runtime.ray import RayExecutor

        return RayExecutor
    if name == "TensorFlowExecutor":
        from fedcore.runtime.tensorflow import TensorFlowExecutor

        return TensorFlowExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

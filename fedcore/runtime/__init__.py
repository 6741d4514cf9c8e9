"""Executors: the reference interpreter and the executor protocol."""

from fedcore.runtime.execution import (
    current_executor,
    execution_context,
    get_default_executor,
    set_default_executor,
)
from fedcore.runtime.executor import ExecutionError, Executor
from fedcore.runtime.reference import ReferenceExecutor
from fedcore.runtime.values import ArgumentError

__all__ = [
    "ArgumentError",
    "ExecutionError",
    "Executor",
    "ReferenceExecutor",
    "current_executor",
    "execution_context",
    "get_default_executor",
    "set_default_executor",
    "RayExecutor",
]


def __getattr__(name):
    # RayExecutor is imported on first use, so that fedcore works without the ray extra.
    if name == "RayExecutor":
        from fedcore.runtime.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

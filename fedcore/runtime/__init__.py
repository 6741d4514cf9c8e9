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
]

"""The executor stack: which executor runs a computation called outside tracing."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Optional

from fedcore.runtime import values

_state = threading.local()
_default = {"executor": None}


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def get_default_executor():
    """The executor that runs computations called like Python functions."""
    if _default["executor"] is None:
        from fedcore.runtime.reference import ReferenceExecutor

        _default["executor"] = ReferenceExecutor()
    return _default["executor"]


def set_default_executor(executor) -> None:
    """Sets the default executor; ``None`` restores the reference interpreter."""
    if executor is not None and not callable(getattr(executor, "execute", None)):
        raise TypeError(f"expected an executor with an execute() method, got {executor!r}")
    _default["executor"] = executor


@contextlib.contextmanager
def execution_context(executor):
    """Runs computations called inside the ``with`` block on ``executor``."""
    if not callable(getattr(executor, "execute", None)):
        raise TypeError(f"expected an executor with an execute() method, got {executor!r}")
    stack = _stack()
    stack.append(executor)
    try:
        yield executor
    finally:
        stack.pop()


def current_executor():
    stack = _stack()
    return stack[-1] if stack else get_default_executor()


def pack_argument(comp, args, kwargs) -> Any:
    """Packs Python arguments into one canonical value of the parameter type."""
    from fedcore.compiler.computation import arrange_arguments

    parameter = comp.type_signature.parameter
    value, packed = arrange_arguments(comp.name, parameter, args, kwargs, comp._parameter_names, values.ArgumentError)
    if parameter is None:
        return None
    where = f"arguments of {comp.name}" if packed else f"argument of {comp.name}"
    try:
        return values.to_internal(value, parameter, where)
    except RecursionError:  # e.g. a list nested thousands deep, where a tensor or struct is expected
        raise values.ArgumentError(
            f"{where}: expected {parameter}, got a value nested too deeply to read (Python's recursion limit was reached)"
        ) from None


def execute(comp, args, kwargs, executor: Optional[Any] = None) -> Any:
    """Runs ``comp`` on Python arguments; returns Python values."""
    executor = executor or current_executor()
    argument = pack_argument(comp, args, kwargs)
    num_clients = values.count_clients(argument, comp.type_signature.parameter)
    result = executor.execute(comp, argument, num_clients=num_clients)
    return values.to_python(result, comp.type_signature.result)

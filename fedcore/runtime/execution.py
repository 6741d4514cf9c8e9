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
    from fedcore.compiler.computation import _match_arguments

    parameter = comp.type_signature.parameter
    if parameter is None:
        if args or kwargs:
            raise values.ArgumentError(f"{comp.name} takes no arguments, got {len(args) + len(kwargs)}")
        return None
    if not args and not kwargs:
        raise values.ArgumentError(f"{comp.name} expects an argument of type {parameter}, got none")
    if len(args) == 1 and not kwargs and comp._parameter_names is None:
        return values.to_internal(args[0], parameter, f"argument of {comp.name}")
    if not isinstance(parameter, values.StructType):
        raise values.ArgumentError(
            f"{comp.name} expects one argument of type {parameter}, got {len(args) + len(kwargs)}"
        )
    items = _match_arguments(comp.name, parameter, args, kwargs)
    from fedcore.structure import Struct

    return values.to_internal(Struct(items), parameter, f"arguments of {comp.name}")


def execute(comp, args, kwargs, executor: Optional[Any] = None) -> Any:
    """Runs ``comp`` on Python arguments; returns Python values."""
    executor = executor or current_executor()
    argument = pack_argument(comp, args, kwargs)
    num_clients = values.count_clients(argument, comp.type_signature.parameter)
    result = executor.execute(comp, argument, num_clients=num_clients)
    return values.to_python(result, comp.type_signature.result)

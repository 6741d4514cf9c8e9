"""Execution contexts: which executor runs a computation called outside tracing.

A call outside tracing goes to the innermost invoking context on the front
end's context stack (``fedcore.compiler.context``).  ``fedcore.runtime``
installs an ``ExecutionContext`` on the default executor at the bottom of that
stack when it is imported; ``execution_context(executor)`` pushes one for
``executor`` on top for the ``with`` block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from fedcore.compiler import context
from fedcore.compiler.tracing import arrange_arguments
from fedcore.runtime import values

_default: dict = {"executor": None, "factory": None}


def _check_executor(executor) -> None:
    if not callable(getattr(executor, "execute", None)):
        raise TypeError(f"expected an executor with an execute() method, got {executor!r}")


def set_default_executor_factory(factory: Callable[[], Any]) -> None:
    """Sets what makes the default executor when none is set (``fedcore.runtime`` sets ``FallbackExecutor``)."""
    _default["factory"] = factory


def get_default_executor() -> Any:
    """The executor that runs computations called like Python functions.

    Returns:
        The executor set with :func:`set_default_executor`, else the built-in default (a
        ``FallbackExecutor``, made on first use).

    Raises:
        RuntimeError: when ``fedcore.runtime`` was never imported (``import fedcore`` imports it).
    """
    if _default["executor"] is None:
        if _default["factory"] is None:
            raise RuntimeError("no default executor: import fedcore.runtime, which sets one")
        _default["executor"] = _default["factory"]()
    return _default["executor"]


def set_default_executor(executor: Optional[Any]) -> None:
    """Sets the executor that computations called like Python functions run on.

    Args:
        executor: an executor (anything with an ``execute`` method, such as
            ``ReferenceExecutor()``), or ``None`` to restore the built-in default (a fresh
            ``FallbackExecutor``: the TensorFlow executor, with the reference interpreter for
            what it cannot run).

    Raises:
        TypeError: when ``executor`` has no ``execute`` method.
    """
    if executor is not None:
        _check_executor(executor)
    _default["executor"] = executor


class ExecutionContext:
    """An invoking context that runs computations on ``executor`` (the default executor when None)."""

    def __init__(self, executor: Optional[Any] = None):
        if executor is not None:
            _check_executor(executor)
        self._executor = executor

    @property
    def executor(self):
        return self._executor if self._executor is not None else get_default_executor()

    def invoke(self, comp, args, kwargs) -> Any:
        return execute(comp, args, kwargs, self.executor)

    def __repr__(self) -> str:
        return f"ExecutionContext({self._executor!r})"


@contextlib.contextmanager
def execution_context(executor: Any) -> Iterator[Any]:
    """Runs computations called inside the ``with`` block on ``executor``.

    Args:
        executor: an executor (anything with an ``execute`` method).

    Yields:
        ``executor``, for ``with execution_context(ReferenceExecutor()) as ex:``.

    Raises:
        TypeError: when ``executor`` has no ``execute`` method.
    """
    _check_executor(executor)
    with context.pushed(ExecutionContext(executor)):
        yield executor


def current_executor() -> Any:
    """The executor that a computation called now (outside tracing) runs on.

    Returns:
        The executor of the innermost :func:`execution_context`, else the default executor.
    """
    for ctx in context.invoking_contexts():
        if isinstance(ctx, ExecutionContext):
            return ctx.executor
    ctx = context.get_default_context()
    return ctx.executor if isinstance(ctx, ExecutionContext) else get_default_executor()


def pack_argument(comp, args, kwargs) -> Any:
    """Packs Python arguments into one canonical value of the parameter type."""
    parameter = comp.type_signature.parameter
    value, packed = arrange_arguments(comp.name, parameter, args, kwargs, comp.parameter_names, values.ArgumentError)
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


def install() -> None:
    """Puts an ExecutionContext on the default executor at the bottom of the context stack."""
    if not isinstance(context.get_default_context(), ExecutionContext):
        context.set_default_context(ExecutionContext())

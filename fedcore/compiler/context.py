"""The context stack: decides whether a call of a computation traces or runs.

While a ``federated_computation`` body runs, a TracingContext sits on top of
the stack and every call appends a typed node to it.  While a
``tf_computation`` body is traced by TensorFlow, a TFTracingContext sits on
top, and calls of other tf_computations inline their TF code.  Otherwise the
call goes to the innermost *invoking* context: an object with
``invoke(comp, args, kwargs)`` pushed with ``pushed``, or, below them all,
the process-wide default context.

The front end knows nothing about executors and imports nothing above it:
the execution layer installs its context at the bottom with
``set_default_context`` when it is imported (as in TFF's context stack), and
``fedcore.execution_context(executor)`` pushes one on top.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, List, Optional, Protocol

from fedcore.compiler.building_blocks import BuildingBlock, Reference, SourceLocation, references_out_of_scope

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_state = threading.local()
_default: dict = {"context": None}


class InvokingContext(Protocol):
    """A context that runs computations: what a call outside tracing goes to."""

    def invoke(self, comp: Any, args: tuple, kwargs: dict) -> Any:
        """Runs ``comp`` on Python arguments; returns Python values."""


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


class TracingContext:
    """Collects the let-bindings of one federated computation being traced.

    Binder names are unique in a whole trace: a computation traced while
    another one is being traced (a nested ``federated_computation``) draws its
    parameter and local names from the same pool as the enclosing one, so a
    value it captures from the enclosing computation can never be confused
    with one of its own.  ``visible`` maps every name in scope to its type:
    the enclosing computation's parameter and the locals it had bound when the
    nested trace started, then this trace's own.
    """

    def __init__(self, name: str, parent: Optional["TracingContext"] = None):
        self.name = name
        self.parent = parent
        self.locals: List[tuple] = []
        self._names: dict = parent._names if parent is not None else {"taken": set(), "counter": 0}
        self.visible: dict = dict(parent.visible) if parent is not None else {}

    def fresh_name(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``...: a name not bound anywhere else in this trace."""
        taken = self._names["taken"]
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def bind_parameter(self, base: str, type_signature) -> str:
        """Claims a unique name for this computation's parameter; returns it."""
        name = self.fresh_name(base)
        self.visible[name] = type_signature
        return name

    def check_in_scope(self, node: BuildingBlock) -> None:
        """A FederatedTypeError when ``node`` uses a value that is not in scope in this computation."""
        for ref, bound in references_out_of_scope(node, self.visible):
            if bound is None:
                raise type_error(
                    f"{self.name} uses a traced value ({ref.name} of type {ref.type_signature}) that belongs to "
                    "another federated computation; a computation's values can be used only inside it and in "
                    "the computations defined within it"
                )
            raise type_error(
                f"{self.name} reads {ref.name} as a value of type {ref.type_signature}, but {ref.name} is bound "
                f"to a value of type {bound} here"
            )

    def bind(self, node: BuildingBlock) -> Reference:
        self.check_in_scope(node)
        while True:
            self._names["counter"] += 1
            name = f"fc{self._names['counter']}"
            if name not in self._names["taken"]:
                break
        self._names["taken"].add(name)
        self.locals.append((name, node))
        self.visible[name] = node.type_signature
        return Reference(name, node.type_signature)


class TFTracingContext:
    """Marks that TensorFlow is tracing the body of a tf_computation."""

    def __init__(self, name: str):
        self.name = name


@contextlib.contextmanager
def pushed(context):
    stack = _stack()
    stack.append(context)
    try:
        yield context
    finally:
        stack.pop()


def current() -> Optional[object]:
    """The innermost tracing context (TracingContext or TFTracingContext), or None.

    Invoking contexts pushed inside a trace do not stop it: calls there still trace.
    """
    for ctx in reversed(_stack()):
        if isinstance(ctx, (TracingContext, TFTracingContext)):
            return ctx
    return None


def current_tracing() -> Optional[TracingContext]:
    top = current()
    return top if isinstance(top, TracingContext) else None


def set_default_context(ctx: Optional[InvokingContext]) -> None:
    """Installs ``ctx`` at the bottom of every thread's stack (``None`` removes it)."""
    if ctx is not None and not callable(getattr(ctx, "invoke", None)):
        raise TypeError(f"expected a context with an invoke() method, got {ctx!r}")
    _default["context"] = ctx


def get_default_context() -> Optional[InvokingContext]:
    return _default["context"]


def invoking_contexts() -> List[InvokingContext]:
    """The invoking contexts on this thread's stack, innermost first (tracing contexts skipped)."""
    return [c for c in reversed(_stack()) if not isinstance(c, (TracingContext, TFTracingContext))]


def invoking_context() -> InvokingContext:
    """The context that runs a computation called now, outside tracing."""
    pushed_contexts = invoking_contexts()
    if pushed_contexts:
        return pushed_contexts[0]
    ctx = _default["context"]
    if ctx is None:
        raise RuntimeError(
            "no execution context is installed, so computations cannot run; use fedcore's top-level API "
            "(fedcore.federated_computation, ...) or import fedcore.runtime, which installs one"
        )
    return ctx


def user_location() -> Optional[SourceLocation]:
    """The innermost stack frame outside fedcore and TensorFlow: where the user's code is."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not (
            filename.startswith(_PACKAGE_DIR)
            or "/tensorflow/" in filename
            or "/keras/" in filename
            or filename.startswith("<frozen")
            or filename.endswith(("contextlib.py", "functools.py"))
            or "/__autograph_generated" in filename
        ):
            return SourceLocation(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


class ArgumentError(TypeError):
    """A value passed to a computation does not match its parameter type."""


class FederatedTypeError(TypeError):
    """A type mismatch in a federated computation, located in the user's code."""

    # Raised inside a tf_computation's body (a computation called with the wrong
    # structure), the error passes through AutoGraph, which re-raises an error of the
    # same type only if that type is built like Exception; otherwise it turns it into
    # a StagingError, which is no TypeError.
    __init__ = Exception.__init__


def type_error(message: str, location: Optional[SourceLocation] = None) -> FederatedTypeError:
    location = location or user_location()
    if location is not None:
        message = f"{message}\n  at {location}"
    return FederatedTypeError(message)


def captured_values_error(name: str, captured, caller: Optional[str] = None,
                          location: Optional[SourceLocation] = None) -> FederatedTypeError:
    """A nested computation ``name``, which uses values of the computation it was defined in, called elsewhere."""
    where = "" if caller is None else f", not in {caller}"
    return type_error(
        f"{name} uses values of the federated computation it was defined in ({', '.join(captured)}); "
        f"it can be called only inside that computation{where}",
        location,
    )

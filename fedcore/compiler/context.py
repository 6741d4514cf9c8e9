"""The context stack: decides whether a call of a computation traces or runs.

While a ``federated_computation`` body runs, a TracingContext sits on top of
the stack and every call appends a typed node to it.  While a
``tf_computation`` body is traced by TensorFlow, a TFTracingContext sits on
top, and calls of other tf_computations inline their TF code.  With nothing
on the stack, calls execute on the current executor.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import List, Optional

from fedcore.compiler.building_blocks import BuildingBlock, Reference, SourceLocation

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_state = threading.local()


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


class TracingContext:
    """Collects the let-bindings of one federated computation being traced."""

    def __init__(self, name: str):
        self.name = name
        self.locals: List[tuple] = []
        self._counter = 0

    def bind(self, node: BuildingBlock) -> Reference:
        self._counter += 1
        name = f"fc{self._counter}"
        self.locals.append((name, node))
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
    stack = _stack()
    return stack[-1] if stack else None


def current_tracing() -> Optional[TracingContext]:
    top = current()
    return top if isinstance(top, TracingContext) else None


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

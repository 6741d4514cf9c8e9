"""TFF's ``tff.backends.reference`` name: sets fedcore's reference interpreter."""

from __future__ import annotations

from fedcore import backends as _backends
from fedcore.runtime import ReferenceExecutor

__all__ = ["set_reference_context"]


def set_reference_context() -> ReferenceExecutor:
    """Sets the reference interpreter, the executor every other one must agree with; returns it."""
    return _backends.set_reference_executor()

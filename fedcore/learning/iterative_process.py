"""``IterativeProcess``: a pair of federated computations, ``initialize`` and ``next``.

``initialize()`` makes the server state; ``next(state, ...)`` takes a state
and more inputs and returns the new state first (optionally with other
outputs).  A training loop is then:

    state = process.initialize()
    for round in range(10):
        state, metrics = process.next(state, federated_data)
"""

from __future__ import annotations

from typing import Any

from fedcore.compiler.computation import Computation
from fedcore.types import FederatedType, FunctionType, StructType

__all__ = ["IterativeProcess"]


def _check_computation(value: Any, what: str) -> Computation:
    if not isinstance(value, Computation):
        raise TypeError(
            f"{what} must be a fedcore computation with a type signature, got {value!r}; a polymorphic "
            "computation must be given its parameter types"
        )
    return value


class IterativeProcess:
    """A stateful process made of two federated computations.

    ``initialize`` takes no argument and returns the state.  ``next`` takes the
    state (its parameter, or the first element of its parameter) and returns
    the state (its result, or the first element of its result).  Both are
    checked when the process is made.
    """

    def __init__(self, initialize_fn: Computation, next_fn: Computation):
        initialize_fn = _check_computation(initialize_fn, "initialize_fn")
        next_fn = _check_computation(next_fn, "next_fn")
        init_type: FunctionType = initialize_fn.type_signature
        if init_type.parameter is not None:
            raise TypeError(f"initialize_fn must take no arguments, but its type is {init_type}")
        state_type = init_type.result
        next_type: FunctionType = next_fn.type_signature
        parameter = next_type.parameter
        if parameter is None:
            raise TypeError(f"next_fn must take the state of type {state_type}, but its type is {next_type}")
        state_in = parameter[0] if isinstance(parameter, StructType) and not _is_state(parameter, state_type) else parameter
        if not state_in.is_assignable_from(state_type):
            raise TypeError(
                f"next_fn's first parameter has type {state_in}, which cannot take the state that "
                f"initialize_fn returns, of type {state_type}"
            )
        result = next_type.result
        state_out = result[0] if isinstance(result, StructType) and not _is_state(result, state_type) else result
        if not state_type.is_assignable_from(state_out):
            raise TypeError(
                f"next_fn returns a state of type {state_out}, but initialize_fn's state has type {state_type}; "
                "the state must keep its type from one call to the next"
            )
        self._initialize = initialize_fn
        self._next = next_fn
        self._state_type = state_type

    @property
    def initialize(self) -> Computation:
        return self._initialize

    @property
    def next(self) -> Computation:
        return self._next

    @property
    def state_type(self):
        return self._state_type

    def __repr__(self) -> str:
        return (
            "IterativeProcess(\n"
            f"  initialize: {self._initialize.type_signature},\n"
            f"  next: {self._next.type_signature},\n"
            ")"
        )


def _is_state(t: Any, state_type: Any) -> bool:
    """Whether ``t`` is the state itself (a struct state), rather than a struct holding it first."""
    if isinstance(state_type, FederatedType) or not isinstance(state_type, StructType):
        return False
    return t.is_assignable_from(state_type) or state_type.is_assignable_from(t)

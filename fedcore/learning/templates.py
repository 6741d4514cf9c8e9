"""``LearningProcess``: an IterativeProcess whose ``next`` returns its state and metrics by name.

The shape of TFF's ``tff.learning.templates.LearningProcess``:

* ``initialize()`` returns the server state;
* ``next(state, client_data)`` returns a :class:`LearningProcessOutput`, with
  the new state in ``.state`` and the round's metrics in ``.metrics``;
* ``get_model_weights(state)`` returns the model's weights held in a state,
  and ``set_model_weights(state, weights)`` a state holding new weights.

All four are fedcore computations, so they run on any executor and can be
called inside other federated computations.
"""

from __future__ import annotations

from typing import Any

import attrs

from fedcore.compiler.computation import Computation, federated_computation
from fedcore.learning.iterative_process import IterativeProcess
from fedcore.types import FederatedType, FunctionType, StructType

__all__ = ["LearningProcess", "LearningProcessOutput"]


@attrs.frozen
class LearningProcessOutput:
    """What ``LearningProcess.next`` returns: the new ``state`` and the round's ``metrics``."""

    state: Any
    metrics: Any


def _check_weights_fn(fn: Any, what: str, state_member, parameters: int) -> Computation:
    if not isinstance(fn, Computation):
        raise TypeError(f"{what} must be a fedcore computation, got {fn!r}")
    t: FunctionType = fn.type_signature
    parameter = t.parameter
    first = parameter[0] if parameters == 2 and isinstance(parameter, StructType) else parameter
    if first is None or not first.is_assignable_from(state_member):
        raise TypeError(f"{what} must take the state's member type {state_member} first, but its type is {t}")
    return fn


class LearningProcess(IterativeProcess):
    """An IterativeProcess for learning: ``next`` returns a ``LearningProcessOutput``.

    ``next_fn``'s result must be the struct ``<state=S@SERVER,metrics=M@SERVER>``
    (a federated computation returning ``LearningProcessOutput(state=...,
    metrics=...)`` has it).  ``get_model_weights`` has the type ``(S -> W)``
    and ``set_model_weights`` the type ``(<S,W> -> S)``, where ``S`` is the
    state's member type.  :meth:`from_iterative_process` makes one from an
    IterativeProcess whose ``next`` returns ``(state, metrics)``.
    """

    def __init__(
        self,
        initialize_fn: Computation,
        next_fn: Computation,
        get_model_weights: Computation,
        set_model_weights: Computation,
    ):
        super().__init__(initialize_fn, next_fn)
        result = next_fn.type_signature.result
        if not isinstance(result, StructType) or result.names() != ("state", "metrics"):
            raise TypeError(
                f"a LearningProcess's next_fn must return <state=...,metrics=...>, but it returns {result}"
            )
        if not isinstance(self.state_type, FederatedType):
            raise TypeError(f"a LearningProcess's state must be placed at SERVER, got {self.state_type}")
        member = self.state_type.member
        self._get_model_weights = _check_weights_fn(get_model_weights, "get_model_weights", member, 1)
        self._set_model_weights = _check_weights_fn(set_model_weights, "set_model_weights", member, 2)

    @classmethod
    def from_iterative_process(
        cls,
        process: IterativeProcess,
        get_model_weights: Computation,
        set_model_weights: Computation,
        metrics_fn: Any = None,
    ) -> "LearningProcess":
        """Wraps ``process``, whose ``next(state, data)`` returns ``(state, metrics)``.

        ``metrics_fn``, called while tracing with the old state, the new state
        and the metrics (federated values at SERVER), returns the metrics that
        ``next`` reports (by default the process's own).
        """
        inner = process.next
        parameter = inner.type_signature.parameter
        if not isinstance(parameter, StructType) or len(parameter) != 2:
            raise TypeError(f"the process's next must take (state, data), but its type is {inner.type_signature}")

        @federated_computation(parameter[0], parameter[1])
        def next_fn(state, client_data):
            out = inner(state, client_data)
            new_state, metrics = out[0], out[1]
            if metrics_fn is not None:
                metrics = metrics_fn(state, new_state, metrics)
            return LearningProcessOutput(state=new_state, metrics=metrics)

        return cls(process.initialize, next_fn, get_model_weights, set_model_weights)

    @property
    def get_model_weights(self) -> Computation:
        return self._get_model_weights

    @property
    def set_model_weights(self) -> Computation:
        return self._set_model_weights

    def __repr__(self) -> str:
        return (
            "LearningProcess(\n"
            f"  initialize: {self.initialize.type_signature},\n"
            f"  next: {self.next.type_signature},\n"
            f"  get_model_weights: {self._get_model_weights.type_signature},\n"
            f"  set_model_weights: {self._set_model_weights.type_signature},\n"
            ")"
        )

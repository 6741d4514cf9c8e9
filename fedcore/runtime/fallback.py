"""The default executor: the TensorFlow executor, with the reference interpreter for what it cannot run.

``FallbackExecutor`` runs each computation on its primary executor (a
``TensorFlowExecutor``) unless that executor refuses it with ``Unsupported``
while *preparing* it: encoding the argument and compiling the program, before
anything of the computation has run.  Such a computation runs on the fallback
(the reference interpreter) instead, and keeps doing so: the decision is made
once per computation, remembered, and reported once on the ``fedcore``
logger at debug level.

Only ``Unsupported`` from preparing moves a computation.  Every other error,
and every error raised once the program runs (a failed assertion, a bad
dataset, an ``ExecutionError``), is the user's to see and is raised as it is.
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from typing import Any, Optional

from fedcore.runtime.executor import Unsupported
from fedcore.runtime.reference import ReferenceExecutor
from fedcore.runtime.tensorflow import TensorFlowExecutor

logger = logging.getLogger("fedcore")

NAME = "fallback"


class FallbackExecutor:
    """Runs computations on ``primary``, and those it cannot run on ``fallback``.

    ``primary`` must have ``prepare(comp, argument, num_clients)``, which
    raises ``Unsupported`` before running anything or returns the call that
    runs the computation (``TensorFlowExecutor`` has it); ``fallback`` is any
    executor.  By default: ``TensorFlowExecutor(num_clients)`` and
    ``ReferenceExecutor(num_clients)``.

    ``runs`` counts the calls each one ran, by executor name (e.g.
    ``{'tensorflow': 3, 'reference': 1}``); ``fallback_reason(comp)`` says
    why ``comp`` runs on the fallback, or is None.
    """

    name = NAME

    def __init__(self, primary: Optional[Any] = None, fallback: Optional[Any] = None, num_clients: Optional[int] = None):
        if num_clients is not None and (isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        if primary is None:
            primary = TensorFlowExecutor(num_clients=num_clients)
        if fallback is None:
            fallback = ReferenceExecutor(num_clients=num_clients)
        if not callable(getattr(primary, "prepare", None)):
            raise TypeError(
                f"the primary executor must have prepare(comp, argument, num_clients) that refuses before running; "
                f"got {primary!r}"
            )
        if not callable(getattr(fallback, "execute", None)):
            raise TypeError(f"expected a fallback executor with an execute() method, got {fallback!r}")
        self.primary = primary
        self.fallback = fallback
        self.runs: "collections.Counter[str]" = collections.Counter()
        # Computation -> why it runs on the fallback; computations that the primary runs are absent.
        self._fallbacks: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FallbackExecutor({self.primary!r}, {self.fallback!r})"

    def fallback_reason(self, comp) -> Optional[str]:
        """Why ``comp`` runs on the fallback executor, or None if it runs on the primary one."""
        with self._lock:
            return self._fallbacks.get(comp)

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        if self.fallback_reason(comp) is None:
            try:
                run = self.primary.prepare(comp, argument, num_clients)
            except Unsupported as e:
                self._fall_back(comp, str(e))
            else:
                self.runs[_name(self.primary)] += 1
                return run()
        self.runs[_name(self.fallback)] += 1
        return self.fallback.execute(comp, argument, num_clients=num_clients)

    def _fall_back(self, comp, reason: str) -> None:
        with self._lock:
            first = comp not in self._fallbacks
            self._fallbacks[comp] = reason
        if first:
            logger.debug(
                "%s runs on the %s executor, since the %s executor cannot run it: %s",
                getattr(comp, "name", comp), _name(self.fallback), _name(self.primary), reason,
            )


def _name(executor: Any) -> str:
    return getattr(executor, "name", None) or type(executor).__name__

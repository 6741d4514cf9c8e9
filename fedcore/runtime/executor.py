"""The executor protocol: the one method every executor implements.

An executor receives a computation and its argument already checked and
converted to canonical form (see ``fedcore.runtime.values``), and returns
the result in canonical form.  Converting user values in and results out is
done once, by ``fedcore.runtime.execution``, for every executor.

An executor is certified by ``fedcore.testing.conformance``, which compares
its results with the reference interpreter's on a shared body of cases.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class Executor(Protocol):
    """Runs computations.

    ``execute(comp, argument, num_clients)``:
      * ``comp`` is a ``fedcore.Computation``: ``comp.ir`` is its IR and
        ``comp.type_signature`` its function type.
      * ``argument`` is the canonical value of ``comp.type_signature.parameter``
        (None when the computation takes no parameter).
      * ``num_clients`` is the number of clients implied by the argument, or
        None when no argument is placed at CLIENTS; the executor then uses its
        own configured count.
    Returns the canonical value of ``comp.type_signature.result``.
    """

    def execute(self, comp: Any, argument: Any, num_clients: Optional[int] = None) -> Any:
        ...


class ExecutionError(RuntimeError):
    """A computation failed while it ran (as opposed to a type or argument error)."""


class Unsupported(ExecutionError):
    """An executor cannot run this computation (as opposed to: the computation failed).

    Raised, for example, by the TF executor for client values of unequal shapes;
    a composite executor may then run the work another way.
    """

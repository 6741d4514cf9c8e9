"""Running a round when some clients fail: drop them, check a policy, finish with the survivors.

:func:`run_round` runs ``process.next(state, client_data)`` as usual.  Only
when that raises an execution error (``fedcore.ExecutionError`` or a
TensorFlow ``OpError``, e.g. a client's dataset whose map raises) does it
look for the clients at fault, by bisection: it reruns the round on halves
of the failing group, from the same state, until each failure is pinned on
one client.  Those clients are dropped; if the survivors satisfy the
:class:`DropoutPolicy`, the round is run once more with them and its result
is returned, with ``clients_dropped`` in the metrics.  Otherwise, or when
the failure cannot be pinned on individual clients (every client fails alike
because the computation itself is wrong, or only a combination fails), it
raises :class:`RoundFailedError` and the caller's state is unchanged.

This works with any executor and any process, since it only calls
``process.next``; a round without failures costs exactly one call.  A round
given fewer clients than the policy's ``min_clients`` fails before it runs,
failure or not: the policy is a promise about every round that completes.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import attrs

from fedcore.runtime.executor import ExecutionError

__all__ = ["DroppedClient", "DropoutPolicy", "RoundFailedError", "RoundResult", "run_round"]


def _default_errors() -> Tuple[type, ...]:
    import tensorflow as tf

    return (ExecutionError, tf.errors.OpError)


def _check_min_clients(_, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a whole number >= 1, got {value!r}")


def _check_fraction(_, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a number between 0 and 1, got {value!r}")


@attrs.frozen
class DropoutPolicy:
    """When a round may go on without its failed clients.

    The round completes when at least ``min_clients`` clients survive and at
    most ``max_dropped_fraction`` of the round's clients failed; otherwise
    it fails.  ``DropoutPolicy(max_dropped_fraction=0.0)`` tolerates no
    failure at all.
    """

    min_clients: int = attrs.field(default=1, validator=_check_min_clients)
    max_dropped_fraction: float = attrs.field(default=0.5, validator=_check_fraction)

    def allows(self, num_clients: int, num_dropped: int) -> bool:
        survivors = num_clients - num_dropped
        fraction = num_dropped / num_clients if num_clients else 0.0
        return survivors >= self.min_clients and fraction <= self.max_dropped_fraction

    def describe(self) -> str:
        return f"at least {self.min_clients} surviving client(s), at most {self.max_dropped_fraction:.0%} dropped"


@attrs.frozen
class DroppedClient:
    """A client excluded from a round: its position in the round's list, its id and its error."""

    index: int
    client_id: Any
    error: str


class RoundFailedError(ExecutionError):
    """A round could not complete; the state passed in is still the current one.

    ``dropped`` lists the clients found to fail (possibly empty when the
    failure could not be pinned on clients); ``__cause__`` is the first error.
    """

    def __init__(self, message: str, dropped: Sequence[DroppedClient] = ()):
        super().__init__(message)
        self.dropped = tuple(dropped)


@attrs.frozen
class RoundResult:
    """The outcome of :func:`run_round`; unpacks as ``state, metrics = result``.

    ``metrics`` is the process's metrics with ``clients_dropped`` added (a
    dict-like metrics gets the key; anything else is wrapped as
    ``{'metrics': metrics, 'clients_dropped': n}``).
    """

    state: Any
    metrics: Any
    num_clients: int
    dropped: Tuple[DroppedClient, ...] = ()

    @property
    def clients_dropped(self) -> int:
        return len(self.dropped)

    def __iter__(self):
        return iter((self.state, self.metrics))


def _short(error: BaseException, limit: int = 500) -> str:
    """One line for an error: TensorFlow's ``{{function_node ...}}`` noise removed, at most ``limit`` characters."""
    text = " ".join(re.sub(r"\{\{[^{}]*\}\}", " ", str(error)).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_dropped(metrics: Any, count: int) -> Any:
    if isinstance(metrics, Mapping):
        out = collections.OrderedDict(metrics)
        out["clients_dropped"] = count
        return out
    return collections.OrderedDict(metrics=metrics, clients_dropped=count)


def run_round(
    process: Any,
    state: Any,
    client_data: Sequence[Any],
    policy: Optional[DropoutPolicy] = None,
    client_ids: Optional[Sequence[Any]] = None,
    errors: Optional[Tuple[type, ...]] = None,
    next_fn: Optional[Callable[[Any, List[Any]], Any]] = None,
) -> RoundResult:
    """One round of ``process`` (an IterativeProcess whose ``next(state, data)`` returns ``(state, metrics)``).

    ``client_data`` is the round's list of client datasets; ``client_ids``
    (same length) names them in the result and in errors.  Clients whose
    work raises one of ``errors`` (default: ``fedcore.ExecutionError`` and
    TensorFlow's ``OpError``) are dropped as described in the module
    docstring; any other exception propagates at once.  ``next_fn(state,
    data)`` replaces ``process.next`` when given (a process with extra
    arguments, say).
    """
    policy = DropoutPolicy() if policy is None else policy
    if not isinstance(policy, DropoutPolicy):
        raise TypeError(f"policy must be a fedcore.learning.DropoutPolicy, got {policy!r}")
    data = list(client_data)
    ids = list(range(len(data))) if client_ids is None else list(client_ids)
    if len(ids) != len(data):
        raise ValueError(f"client_ids has {len(ids)} ids but client_data has {len(data)} datasets")
    if len(data) < policy.min_clients:
        raise RoundFailedError(
            f"the round has {len(data)} client(s), fewer than the dropout policy's min_clients="
            f"{policy.min_clients} ({policy.describe()}); it was not run and the state is unchanged"
        )
    caught = _default_errors() if errors is None else tuple(errors)
    step = process.next if next_fn is None else next_fn

    def attempt(indices: Sequence[int]):
        try:
            return step(state, [data[i] for i in indices]), None
        except caught as e:  # noqa: PERF203
            return None, e

    everyone = list(range(len(data)))
    result, first_error = attempt(everyone)
    if first_error is None:
        new_state, metrics = result
        return RoundResult(new_state, _with_dropped(metrics, 0), len(data))
    if not data:
        raise first_error  # no client to blame: the computation itself fails

    # Pin the failure on clients: a failing group is split in halves until single clients remain.
    failed: List[Tuple[int, BaseException]] = []
    unattributed: List[Sequence[int]] = []
    def probe(indices: Sequence[int]) -> Optional[BaseException]:
        """The error of a round of just these clients, None if it succeeds."""
        return attempt(indices)[1]

    def bisect(indices: Sequence[int], error: BaseException) -> None:
        if len(indices) == 1:
            failed.append((indices[0], error))
            return
        middle = len(indices) // 2
        halves = (indices[:middle], indices[middle:])
        errors_found = [probe(half) for half in halves]
        if all(e is None for e in errors_found):
            unattributed.append(indices)
            return
        for half, e in zip(halves, errors_found):
            if e is not None:
                bisect(half, e)

    bisect(everyone, first_error)
    failed.sort(key=lambda pair: pair[0])
    dropped = tuple(DroppedClient(i, ids[i], _short(e)) for i, e in failed)
    listed = "; ".join(f"{d.client_id!r}: {d.error}" for d in dropped[:5]) + (
        f"; and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    )
    if unattributed:
        groups = ", ".join("[" + ", ".join(repr(ids[i]) for i in g) + "]" for g in unattributed)
        raise RoundFailedError(
            f"the round failed, but not because of any one client: the clients {groups} fail together and "
            f"succeed on their own halves; the state is unchanged. The error was: {_short(first_error)}",
            dropped,
        ) from first_error
    if not policy.allows(len(data), len(dropped)):
        hint = (
            " Every client failed, which points to an error in the computation or the data pipeline "
            "rather than to client dropouts."
            if len(dropped) == len(data) else ""
        )
        raise RoundFailedError(
            f"the round failed: {len(dropped)} of its {len(data)} clients failed, leaving "
            f"{len(data) - len(dropped)}, but the dropout policy needs {policy.describe()}; the state is "
            f"unchanged. Failed clients: {listed}.{hint}",
            dropped,
        ) from first_error
    survivors = [i for i in everyone if i not in {d.index for d in dropped}]
    result, error = attempt(survivors)
    if error is not None:
        raise RoundFailedError(
            f"the round failed again with the {len(survivors)} clients left after dropping {listed}; the state "
            f"is unchanged. The error was: {_short(error)}",
            dropped,
        ) from error
    new_state, metrics = result
    return RoundResult(new_state, _with_dropped(metrics, len(dropped)), len(data), dropped)

"""Small hand drivers that run the pieces of a deployment form, as a platform would.

They call each piece as a computation on the current executor and move the
values between pieces in Python, so a test can compare a form's result with
the computation it came from.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fedcore.structure import Struct, build_container, python_items


def _map(fn, *trees):
    """Applies ``fn`` leaf by leaf to structurally equal values (Struct, dicts, tuples, attrs...)."""
    first = trees[0]
    if isinstance(first, Struct):
        return Struct((n, _map(fn, *(t[i] for t in trees))) for i, n in enumerate(first.names()))
    items = python_items(first)
    if items is not None and not isinstance(first, (str, bytes)):
        others = [python_items(t) for t in trees[1:]]
        mapped = [(n, _map(fn, v, *(o[i][1] for o in others))) for i, (n, v) in enumerate(items)]
        return build_container(type(first), mapped)
    return fn(*trees)


def _is_structure(value: Any) -> bool:
    return isinstance(value, Struct) or (python_items(value) is not None and not isinstance(value, (str, bytes)))


def _secure_sum(values: Sequence[Any], bound: Any) -> Any:
    """What a secure-aggregation service returns: the sum, after checking every input's bound."""
    if not values:
        raise ValueError("this driver needs at least one client for a secure sum")
    limits = bound if _is_structure(bound) else _map(lambda _: bound, values[0])

    def check(v, limit):
        if np.any(np.asarray(v) < 0) or np.any(np.asarray(v) > np.asarray(limit)):
            raise ValueError(f"secure sum input {v} is outside [0, {limit}]")

    for v in values:
        _map(check, v, limits)
    return _map(lambda *vs: np.sum(np.stack([np.asarray(x) for x in vs]), axis=0).astype(np.asarray(vs[0]).dtype), *values)


def run_map_reduce_form(form, state: Any, client_data: Sequence[Any], groups: int = 2) -> Any:
    """prepare once, work per client, accumulate in ``groups`` partial aggregates, merge, report, update."""
    broadcast = form.prepare(state)
    outputs = [form.work(data, broadcast) for data in client_data]
    partials = []
    for g in range(groups):
        acc = form.zero()
        for out in outputs[g::groups]:
            acc = form.accumulate(acc, out[0])
        partials.append(acc)
    total = partials[0]
    for p in partials[1:]:
        total = form.merge(total, p)
    reported = form.report(total)
    bounds = form.secure_sum_max_input()
    secure = Struct.unnamed(*(
        _secure_sum([out[1][j] for out in outputs], bounds[j]) for j in range(len(bounds))
    ))
    return form.update(state, Struct.unnamed(reported, secure))


def run_distribute_aggregate_form(form, state: Any, client_data: Sequence[Any]) -> Any:
    """server_prepare, broadcast, client work, aggregation, server result: all clients at once."""
    to_broadcast, kept = form.server_prepare(state)
    received = form.server_to_client_broadcast(to_broadcast)
    sent = form.client_work(list(client_data), received)
    aggregates = form.client_to_server_aggregation(kept, sent)
    return form.server_result(kept, aggregates)

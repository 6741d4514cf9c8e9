"""The Ray driver's rule for each intrinsic, keyed by the definition.

Client-local intrinsics make plan nodes; aggregations queue an output whose
parts the workers compute.  Every aggregation with a monoid has one rule
(``MonoidPartial``: the workers fold with the monoid, the driver merges and
reports).  A fused aggregation of a map (made by the compiler's
``fuse_map_reduce`` pass) is its base aggregation of a ``Map`` node: the map
runs on the workers and its results are aggregated there, never sent.
Aggregations of values that are all equal, and local work (sequences, generic
plus and zero), run on the driver by the reference interpreter's rules.
"""

from __future__ import annotations

import uuid
from typing import Any, List, Tuple

import numpy as np

from fedcore.compiler import intrinsics as defs
from fedcore.compiler.intrinsics import Kind, RuleTable
from fedcore.runtime import reference, secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray import plan
from fedcore.runtime.ray.lazy import force
from fedcore.structure import Struct
from fedcore.types import Type

RULES = RuleTable("ray")


def on_driver(definition: defs.IntrinsicDef):
    """The reference interpreter's rule, on the driver (values forced first)."""
    rule = reference.RULES[definition]
    return lambda interp, arg, t: rule(interp, force(arg), t)


RULES.register_kind(Kind.SEQUENCE, on_driver, when=lambda d: reference.RULES.get(d) is not None)
RULES.register_kind(Kind.GENERIC, on_driver, when=lambda d: reference.RULES.get(d) is not None)


# Placing a value and server work mean on the driver what they mean in the reference.
for _definition in (defs.FEDERATED_VALUE_AT_SERVER, defs.FEDERATED_VALUE_AT_CLIENTS, defs.FEDERATED_BROADCAST,
                    defs.FEDERATED_EVAL_AT_SERVER, defs.FEDERATED_MAP_ALL_EQUAL, defs.FEDERATED_APPLY):
    RULES.register(_definition)(reference.RULES[_definition])


@RULES.register(defs.FEDERATED_EVAL_AT_CLIENTS)
def _eval_at_clients(interp, fn, t):
    interp.num_clients  # raises a clear error when the count is unknown
    return interp.node(plan.Eval(interp.executor.ship(fn)))


@RULES.register(defs.FEDERATED_MAP)
def _map(interp, arg, t):
    fn, values = arg
    return interp.node(plan.Map(interp.executor.ship(fn)), interp.client_node(values, t.parameter[1]))


@RULES.register(defs.FEDERATED_ZIP_AT_CLIENTS)
def _zip_at_clients(interp, arg, t):
    nodes = [interp.client_node(v, e) for v, e in zip(arg, t.parameter)]
    return interp.node(plan.Zip(tuple(t.parameter.names())), *nodes)


@RULES.register(defs.FEDERATED_ZIP_AT_SERVER)
def _zip_at_server(interp, arg, t):
    return Struct(zip(t.parameter.names(), arg))


def client_operands(definition: defs.IntrinsicDef, arg: Any, parameter: Type) -> List[Tuple[Any, Type]]:
    """An aggregation's client values and their types (``definition.client_operands`` of them)."""
    if definition.client_operands is None:
        return [(arg, parameter)]
    return [(arg[i], parameter[i]) for i in range(definition.client_operands)]


def input_node(interp, definition: defs.IntrinsicDef, arg: Any, parameter: Type) -> plan.Node:
    """The node of each client's input to an aggregation: its client operands, zipped when several."""
    nodes = [interp.client_node(v, e) for v, e in client_operands(definition, arg, parameter)]
    if len(nodes) == 1:
        return nodes[0]
    return interp.node(plan.Zip((None,) * len(nodes)), *nodes)


def _all_equal(definition: defs.IntrinsicDef, arg: Any, parameter: Type) -> bool:
    return all(e.all_equal for _, e in client_operands(definition, arg, parameter))


def _monoid_rule(definition: defs.IntrinsicDef):
    def apply(interp, arg, t):
        if _all_equal(definition, arg, t.parameter):
            return on_driver(definition)(interp, arg, t)
        node = input_node(interp, definition, arg, t.parameter)
        u = definition.client_input_type(t.parameter)
        return interp.queue(plan.MonoidPartial(node.id, definition.monoid, u, definition.uri))

    return apply


RULES.register_kind(Kind.AGGREGATE, _monoid_rule, when=lambda d: d.monoid is not None)


@RULES.register(defs.FEDERATED_AGGREGATE)
def _aggregate(interp, arg, t):
    if _all_equal(defs.FEDERATED_AGGREGATE, arg, t.parameter):
        return on_driver(defs.FEDERATED_AGGREGATE)(interp, arg, t)
    values, zero, accumulate, merge, report = arg
    node = input_node(interp, defs.FEDERATED_AGGREGATE, arg, t.parameter)
    zero = force(zero)

    def finish(parts):
        acc = None
        for p in parts:
            acc = p if acc is None else force(merge(Struct.unnamed(acc, p)))
        return force(report(zero if acc is None else acc))

    return interp.queue(plan.AggregatePartial(node.id, zero, interp.executor.ship(accumulate)), finish)


def _fused_rule(definition: defs.IntrinsicDef):
    """``base(<federated_map(<f, x>), rest...>)``: the base's rule on a ``Map`` node, so the map runs
    on the workers and its results are aggregated there."""
    base = definition.base

    def apply(interp, arg, t):
        fn, clients, rest = arg[0], arg[1], list(arg)[2:]
        base_type = base.instantiate(defs.unfused_argument_type(definition, t.parameter))
        mapped = interp.node(plan.Map(interp.executor.ship(fn)), interp.client_node(clients, t.parameter[1]))
        base_arg = mapped if base.client_operands is None else Struct.unnamed(mapped, *rest)
        return RULES[base](interp, base_arg, base_type)

    return apply


RULES.register_kind(Kind.FUSED, _fused_rule)


@RULES.register(defs.FEDERATED_SECURE_SUM)
def _secure_sum(interp, arg, t):
    if _all_equal(defs.FEDERATED_SECURE_SUM, arg, t.parameter):
        return on_driver(defs.FEDERATED_SECURE_SUM)(interp, arg, t)
    values, bound = arg
    member = t.result.member
    node = input_node(interp, defs.FEDERATED_SECURE_SUM, arg, t.parameter)
    bounds = [np.asarray(b) for b in secure_aggregation.leaf_bounds(force(bound), member)]
    try:
        bits = secure_aggregation.bits_for(interp.num_clients, bounds)
    except secure_aggregation.SecureSumError as e:
        raise ExecutionError(str(e)) from None
    # The clients' key pairs are made on the workers (plan.SecureSumPartial); the driver only relays public keys.
    return interp.queue(plan.SecureSumPartial(node.id, member, bounds, bits, uuid.uuid4().hex))


__all__ = ["RULES", "client_operands", "input_node", "on_driver"]

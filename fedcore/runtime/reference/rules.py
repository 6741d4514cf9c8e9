"""The reference interpreter's rule for each intrinsic, on canonical values.

Aggregations with a monoid share one rule: fold every client's input into
the monoid's zero, one client at a time, and report (``algebra.Monoid.fold``).
Over zero clients that is ``report(zero)``: zeros for sums, NaN for the
means, the dtype's largest value for min and its smallest for max.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from fedcore.compiler import algebra
from fedcore.compiler import intrinsics as defs
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import tf_bridge
from fedcore.compiler.intrinsics import Kind, RuleTable
from fedcore.runtime import secure_aggregation
from fedcore.runtime.datasets import from_tf_leaf, sequence_elements, to_tf_leaves
from fedcore.runtime.executor import ExecutionError
from fedcore.structure import Struct
from fedcore.types import StructType, TensorType, Type

RULES = RuleTable("reference")


def call_tf(node: bb.TensorFlowComputation, arg: Any) -> Any:
    """Runs a TF computation on a canonical value; returns a canonical value."""
    parameter = node.type_signature.parameter
    leaves = [] if parameter is None else to_tf_leaves(arg, parameter)
    return tf_bridge.unflatten(node.function.call_leaves(leaves), node.type_signature.result, from_tf_leaf)


def zero(t: Type) -> Any:
    """The zero of a type with fully known shapes."""
    match t:
        case TensorType(shape=shape):
            if shape is None or any(d is None for d in shape):
                raise ExecutionError(f"cannot build a zero of type {t}, whose shape is not fully known")
            return np.zeros(shape, t.np_dtype)
        case StructType():
            return Struct([(n, zero(e)) for n, e in t.elements])
    raise ExecutionError(f"cannot build a zero of type {t}")


def plus(values: List[Any], t: Type) -> Any:
    """The sum of canonical values of type ``t`` (their zero for none), by the sum monoid."""
    leaves = [tf_bridge.flatten(v, t) for v in values]
    try:
        return tf_bridge.unflatten(defs.FEDERATED_SUM.monoid.fold(algebra.NUMPY, t, leaves), t)
    except (algebra.ShapeNotKnown, algebra.IntegerOverflow) as e:
        raise ExecutionError(str(e)) from None


def client_inputs(interp, definition: defs.IntrinsicDef, arg: Any, parameter: Type) -> List[List[Any]]:
    """Each client's input to an aggregation, as flat leaves of ``definition.client_input_type``."""
    u = definition.client_input_type(parameter)
    if definition.client_operands is None:
        return [tf_bridge.flatten(v, u) for v in interp.client_values(arg, parameter)]
    columns = [interp.client_values(arg[i], parameter[i]) for i in range(definition.client_operands)]
    rows = columns[0] if len(columns) == 1 else [Struct.unnamed(*row) for row in zip(*columns)]
    return [tf_bridge.flatten(row, u) for row in rows]


# --------------------------------------------------------------------------
# Intrinsic rules.


@RULES.register(defs.FEDERATED_VALUE_AT_SERVER, defs.FEDERATED_VALUE_AT_CLIENTS, defs.FEDERATED_BROADCAST)
def _identity(interp, arg, t):
    return arg


@RULES.register(defs.FEDERATED_EVAL_AT_SERVER)
def _eval_at_server(interp, fn, t):
    return fn()


@RULES.register(defs.FEDERATED_EVAL_AT_CLIENTS)
def _eval_at_clients(interp, fn, t):
    return [fn() for _ in range(interp.num_clients)]


@RULES.register(defs.FEDERATED_MAP)
def _map(interp, arg, t):
    fn, values = arg
    return [fn(v) for v in interp.client_values(values, t.parameter[1])]


@RULES.register(defs.FEDERATED_MAP_ALL_EQUAL, defs.FEDERATED_APPLY)
def _apply(interp, arg, t):
    fn, value = arg
    return fn(value)


@RULES.register(defs.FEDERATED_ZIP_AT_CLIENTS)
def _zip_at_clients(interp, arg, t):
    columns = [interp.client_values(v, e) for v, e in zip(arg, t.parameter)]
    names = t.parameter.names()
    return [Struct(zip(names, row)) for row in zip(*columns)] if columns else []


@RULES.register(defs.FEDERATED_ZIP_AT_SERVER)
def _zip_at_server(interp, arg, t):
    return Struct(zip(t.parameter.names(), arg))


def _monoid_rule(definition: defs.IntrinsicDef):
    monoid = definition.monoid

    def apply(interp, arg, t):
        u = definition.client_input_type(t.parameter)
        try:
            leaves = monoid.fold(algebra.NUMPY, u, client_inputs(interp, definition, arg, t.parameter))
        except algebra.ShapeNotKnown as e:
            raise ExecutionError(f"{definition.uri} over no clients: {e}") from None
        except algebra.IntegerOverflow as e:
            raise ExecutionError(f"{definition.uri}: {e}") from None
        return tf_bridge.unflatten(leaves, t.result.member)

    return apply


RULES.register_kind(Kind.AGGREGATE, _monoid_rule, when=lambda d: d.monoid is not None)


@RULES.register(defs.FEDERATED_AGGREGATE)
def _federated_aggregate(interp, arg, t):
    values, zero_value, accumulate, merge, report = arg
    accumulator = zero_value
    for v in interp.client_values(values, t.parameter[0]):
        accumulator = accumulate(Struct.unnamed(accumulator, v))
    return report(accumulator)


def _fused_rule(definition: defs.IntrinsicDef):
    """``base(<federated_map(<f, x>), rest...>)``, as it reads."""
    base = definition.base

    def apply(interp, arg, t):
        fn, clients = arg[0], arg[1]
        base_type = base.instantiate(defs.unfused_argument_type(definition, t.parameter))
        mapped = [fn(v) for v in interp.client_values(clients, t.parameter[1])]
        base_arg = mapped if base.client_operands is None else Struct.unnamed(mapped, *list(arg)[2:])
        return RULES[base](interp, base_arg, base_type)

    return apply


RULES.register_kind(Kind.FUSED, _fused_rule)


@RULES.register(defs.FEDERATED_SECURE_SUM)
def _federated_secure_sum(interp, arg, t):
    values, max_input = arg
    member = t.result.member
    client_values = interp.client_values(values, t.parameter[0])
    if not client_values:
        return zero(member)
    # The masking protocol of fedcore.runtime.secure_aggregation: bounds check, pairwise masks, unmasked sum.
    try:
        sums = secure_aggregation.secure_sum(
            [tf_bridge.flatten(v, member) for v in client_values],
            [np.asarray(b) for b in secure_aggregation.leaf_bounds(max_input, member)],
            [leaf.np_dtype for leaf in tf_bridge.leaf_types(member)],
        )
    except secure_aggregation.SecureSumError as e:
        raise ExecutionError(str(e)) from None
    return tf_bridge.unflatten(sums, member)


@RULES.register(defs.SEQUENCE_MAP)
def _sequence_map(interp, arg, t):
    fn, seq = arg
    return [fn(e) for e in sequence_elements(seq, t.parameter[1].element)]


@RULES.register(defs.SEQUENCE_REDUCE)
def _sequence_reduce(interp, arg, t):
    seq, accumulator, op = arg
    for e in sequence_elements(seq, t.parameter[0].element):
        accumulator = op(Struct.unnamed(accumulator, e))
    return accumulator


@RULES.register(defs.SEQUENCE_SUM)
def _sequence_sum(interp, seq, t):
    return plus(sequence_elements(seq, t.parameter.element), t.result)


@RULES.register(defs.GENERIC_PLUS)
def _generic_plus(interp, arg, t):
    return plus([arg[0], arg[1]], t.result)


@RULES.register(defs.GENERIC_ZERO)
def _generic_zero(interp, arg, t):
    return zero(t)

"""The TF backend's rule for each intrinsic: graph code on stacked (clients-axis) values.

Aggregations with a monoid share one rule: the monoid's ``accumulate_all``
over the clients axis, then ``report``.  A fused aggregate of a map runs the
map vectorized where it can, and otherwise folds each client's result into
the monoid's accumulator in a graph loop.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np
import tensorflow as tf

from fedcore.compiler import algebra
from fedcore.compiler import intrinsics as defs
from fedcore.compiler import tf_bridge
from fedcore.compiler.intrinsics import Kind
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.runtime import secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow.lowering import (
    Compiler,
    Lowered,
    Reduction,
    add,
    cast_flat,
    client_view,
    flat,
    flatten,
    fully_known,
    map_leaves,
    over_clients,
    unflatten,
    zeros,
)
from fedcore.runtime.tensorflow import per_client
from fedcore.runtime.tensorflow.tables import RULES
from fedcore.runtime.tensorflow.values import Stacked
from fedcore.structure import Struct
from fedcore.types import FunctionType, StructType, Type


@RULES.register(defs.FEDERATED_VALUE_AT_SERVER, defs.FEDERATED_VALUE_AT_CLIENTS, defs.FEDERATED_BROADCAST)
def _identity(c: Compiler, arg, t):
    return arg


@RULES.register(defs.FEDERATED_EVAL_AT_SERVER)
def _eval_at_server(c: Compiler, fn, t):
    return fn(None)


@RULES.register(defs.FEDERATED_EVAL_AT_CLIENTS)
def _eval_at_clients(c: Compiler, fn, t):
    return Stacked(over_clients(c.n, lambda i: fn(None), t.result.member, c.parallel_clients, c.unordered_clients))


@RULES.register(defs.FEDERATED_MAP)
def _federated_map(c: Compiler, arg, t):
    fn, value = arg
    return c.map_clients(fn, value, t.parameter[1], t.result.member)


@RULES.register(defs.FEDERATED_MAP_ALL_EQUAL, defs.FEDERATED_APPLY)
def _apply(c: Compiler, arg, t):
    fn, value = arg
    return fn(value)


@RULES.register(defs.FEDERATED_ZIP_AT_CLIENTS)
def _zip_at_clients(c: Compiler, arg, t):
    return Stacked(Struct([(n, c.members(v, e)) for (n, e), v in zip(t.parameter.elements, arg)]))


@RULES.register(defs.FEDERATED_ZIP_AT_SERVER)
def _zip_at_server(c: Compiler, arg, t):
    return arg


def stacked_inputs(c: Compiler, definition: defs.IntrinsicDef, arg: Any, parameter: Type) -> List[tf.Tensor]:
    """An aggregation's client inputs as flat leaves with a leading clients axis."""
    if definition.client_operands is None:
        return flat(c.stacked(arg, parameter))
    return [leaf for i in range(definition.client_operands) for leaf in flat(c.stacked(arg[i], parameter[i]))]


def _zero(c: Compiler, monoid: algebra.Monoid, u: Type, stacked: List[tf.Tensor]) -> List[tf.Tensor]:
    """The monoid's zero; where ``u`` leaves shapes open, shaped like the clients' inputs."""
    shapes = None
    if not fully_known(u) and c.n > 0:
        shapes = [algebra.TENSORFLOW.shape(x[0]) for x in stacked]
    try:
        return monoid.zero(algebra.TENSORFLOW, u, shapes)
    except algebra.ShapeNotKnown as e:
        raise ExecutionError(str(e)) from None


def reduce_stacked(c: Compiler, monoid: algebra.Monoid, u: Type, stacked: List[tf.Tensor]) -> List[tf.Tensor]:
    """report(accumulate_all(zero, inputs)): the whole clients axis at once."""
    acc = _zero(c, monoid, u, stacked)
    if c.n > 0:
        acc = monoid.accumulate_all(algebra.TENSORFLOW, u, acc, stacked)
    return monoid.report(algebra.TENSORFLOW, u, acc)


def _monoid_rule(definition: defs.IntrinsicDef):
    def apply(c: Compiler, arg, t):
        u = definition.client_input_type(t.parameter)
        leaves = reduce_stacked(c, definition.monoid, u, stacked_inputs(c, definition, arg, t.parameter))
        return unflatten(leaves, t.result.member)

    return apply


RULES.register_kind(Kind.AGGREGATE, _monoid_rule, when=lambda d: d.monoid is not None)


@RULES.register(defs.FEDERATED_AGGREGATE)
def _aggregate(c: Compiler, arg, t):
    values, zero, accumulate, merge, report = arg
    members = c.members(values, t.parameter[0])
    acc_type = t.parameter[1]
    return report(c._fold(acc_type, cast_flat(zero, acc_type),
                          lambda acc, i: accumulate(Struct.unnamed(acc, client_view(members, i)))))


def _fused_rule(definition: defs.IntrinsicDef):
    """An aggregate of a map: vectorized, the map's stacked result is aggregated; in the sequential
    loop each client's result is folded in as soon as it is computed, so results are never held
    for all clients at once."""
    base = definition.base

    def apply(c: Compiler, arg, t):
        fn, clients, rest = arg[0], arg[1], list(arg)[2:]
        base_type = base.instantiate(defs.unfused_argument_type(definition, t.parameter))
        members = c.members(clients, t.parameter[1])
        mapped = c._try_vectorized(fn, members, definition.uri)
        u = base.client_input_type(base_type.parameter)
        if mapped is None and (base.monoid is None or fully_known(u)):
            return _fold_clients(c, base, base_type, fn, members, rest)
        if mapped is None:
            mapped = Stacked(c._map_sequential(fn, members, fn.type_signature.result))
        base_arg = mapped if base.client_operands is None else Struct.unnamed(mapped, *rest)
        return RULES[base](c, base_arg, base_type)

    return apply


def _fold_clients(c: Compiler, base: defs.IntrinsicDef, t: FunctionType, fn: Lowered, members: Any, rest: list):
    if base.monoid is None:  # federated_aggregate: the user's accumulator functions
        zero, accumulate, _, report = rest
        acc_type = t.parameter[1]
        return report(c._fold(acc_type, cast_flat(zero, acc_type),
                              lambda acc, i: accumulate(Struct.unnamed(acc, fn(client_view(members, i))))))
    u = base.client_input_type(t.parameter)
    others = [flat(c.stacked(r, t.parameter[k + 1])) for k, r in enumerate(rest[: (base.client_operands or 1) - 1])]

    def inputs(y, i):
        return cast_flat(y, fn.type_signature.result) + [leaf[i] for other in others for leaf in other]

    (out,) = c.fold_reductions(fn, members, [Reduction(base.monoid, u, inputs, t.result.member)])
    return out


RULES.register_kind(Kind.FUSED, _fused_rule)

@RULES.register(defs.FEDERATED_SECURE_SUM)
def _secure_sum(c: Compiler, arg, t):
    values, bound = arg
    stacked = c.stacked(values, t.parameter[0])
    value_leaves = flat(stacked)
    bound_leaves = [tf.convert_to_tensor(b) for b in secure_aggregation.leaf_bounds(bound, t.result.member)]
    if c.n == 0:
        return map_leaves(stacked, lambda x: tf.reduce_sum(x, axis=0))
    n = c.n

    def protocol(*arrays):
        # The masking protocol of fedcore.runtime.secure_aggregation, on the clients' stacked leaves.
        leaves, bounds = arrays[: len(value_leaves)], arrays[len(value_leaves) :]
        try:
            sums = secure_aggregation.secure_sum(
                [[leaf[i] for leaf in leaves] for i in range(n)], list(bounds), [leaf.dtype for leaf in leaves]
            )
        except secure_aggregation.SecureSumError as e:
            return [np.zeros(leaf.shape[1:], leaf.dtype) for leaf in leaves] + [np.array(str(e).encode())]
        return list(sums) + [np.array(b"")]

    # Bounds are checked, and errors reported, by the protocol: its message names the client.
    outputs = tf.numpy_function(
        protocol, value_leaves + bound_leaves, [v.dtype for v in value_leaves] + [tf.string], stateful=True
    )
    error = outputs[-1]
    sums = []
    for v, s in zip(value_leaves, outputs[:-1]):
        s.set_shape(v.shape[1:])
        sums.append(s)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(error, ""), [error], summarize=1)]):
        sums = iter([tf.identity(s) for s in sums])
    return map_leaves(stacked, lambda _: next(sums))



def _dataset_fn(fn: Lowered, element_type: Type):
    def apply(*element):
        e = element[0] if len(element) == 1 else element
        out = fn(tf_bridge.from_dataset_structure(e, element_type))
        return tf_bridge.to_dataset_structure(out, fn.type_signature.result)

    return apply


@RULES.register(defs.SEQUENCE_MAP)
def _sequence_map(c: Compiler, arg, t):
    fn, ds = arg
    return per_client.as_dataset(ds).map(_dataset_fn(fn, t.parameter[1].element))


def _to_nest(value: Any) -> Any:
    if isinstance(value, Struct):
        return tuple(_to_nest(v) for v in value)
    return value


def _from_nest(nest: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _from_nest(v, e)) for (n, e), v in zip(t.elements, nest)])
    return nest


@RULES.register(defs.SEQUENCE_REDUCE)
def _sequence_reduce(c: Compiler, arg, t):
    ds, zero, op = arg
    element_type, acc_type = t.parameter[0].element, t.parameter[1]
    if isinstance(ds, per_client.ClientSequence):  # stepped from the cohort's tensors, no tf.data
        def fold(acc, element):
            new = op(Struct.unnamed(unflatten(acc, acc_type), unflatten(element, element_type)))
            return cast_flat(new, acc_type)

        invariants = [tf.TensorShape(None if lt.shape is None else list(lt.shape)) for lt in leaf_types(acc_type)]
        return unflatten(ds.reduce(cast_flat(zero, acc_type), invariants, fold), acc_type)

    def step(acc, *element):
        e = element[0] if len(element) == 1 else element
        new = op(Struct.unnamed(_from_nest(acc, acc_type), tf_bridge.from_dataset_structure(e, element_type)))
        return _to_nest(_cast_like(new, acc_type))

    return _from_nest(ds.reduce(_to_nest(_cast_like(zero, acc_type)), step), acc_type)


def _cast_like(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _cast_like(v, e)) for (n, e), v in zip(t.elements, value)])
    return tf.convert_to_tensor(value, dtype=t.tf_dtype)


@RULES.register(defs.SEQUENCE_SUM)
def _sequence_sum(c: Compiler, ds, t):
    """The sum monoid folded over the dataset, as the reference sums: integers exactly."""
    element_type = t.parameter.element
    ds = per_client.as_dataset(ds)
    monoid, xp = defs.FEDERATED_SUM.monoid, algebra.TENSORFLOW
    try:
        zero = monoid.zero(xp, element_type)
    except algebra.ShapeNotKnown as e:
        raise ExecutionError(str(e)) from None
    if zero:
        def step(acc, *e):
            element = tf_bridge.from_dataset_structure(e[0] if len(e) == 1 else e, element_type)
            return tuple(monoid.accumulate(xp, element_type, list(acc), flat(element)))

        return unflatten(monoid.report(xp, element_type, list(ds.reduce(tuple(zero), step))), element_type)
    zero = zeros(element_type)
    return _from_nest(
        ds.reduce(
            _to_nest(zero),
            lambda acc, *e: _to_nest(
                add(_from_nest(acc, element_type), tf_bridge.from_dataset_structure(e[0] if len(e) == 1 else e, element_type))
            ),
        ),
        element_type,
    )


@RULES.register(defs.GENERIC_PLUS)
def _generic_plus(c: Compiler, arg, t):
    return add(arg[0], arg[1])


@RULES.register(defs.GENERIC_ZERO)
def _generic_zero(c: Compiler, arg, t):
    return zeros(t)


# -- vectorized (clients-axis) rules for client-local intrinsics ------------


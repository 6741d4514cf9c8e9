"""The reference interpreter: simple and obviously correct, the golden standard.

It walks the IR node by node.  Every intrinsic has a rule here that spells
out its meaning on canonical values (see ``fedcore.runtime.values``).
Aggregates over zero clients return the identity of the operation:
sum and secure_sum give zeros, min gives the largest value of the dtype
(+inf for floats), max the smallest (-inf), mean and weighted mean give NaN
(0/0), and federated_aggregate reports its zero.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import tf_bridge
from fedcore.compiler.intrinsics import register_rule
from fedcore.runtime.datasets import from_tf_leaf, sequence_elements, to_tf_leaves
from fedcore.runtime import secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.structure import Struct
from fedcore.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    StructType,
    TensorType,
    Type,
)

NAME = "reference"


class ReferenceExecutor:
    """Interprets the IR directly.

    ``num_clients`` is used when no argument placed at CLIENTS says how many
    clients there are (e.g. for ``federated_eval`` at CLIENTS).  ``data``
    maps the uris of Data nodes to canonical values.
    """

    name = NAME

    def __init__(self, num_clients: Optional[int] = None, data: Optional[Dict[str, Any]] = None):
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        self.num_clients = num_clients
        self.data = dict(data or {})

    def __repr__(self) -> str:
        return f"ReferenceExecutor(num_clients={self.num_clients})"

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        interpreter = Interpreter(num_clients if num_clients is not None else self.num_clients, self.data)
        fn = interpreter.evaluate(comp.ir, {})
        if comp.type_signature.parameter is None:
            return fn()
        return fn(argument)


class Interpreter:
    def __init__(self, num_clients: Optional[int], data: Dict[str, Any]):
        self._num_clients = num_clients
        self.data = data

    @property
    def num_clients(self) -> int:
        if self._num_clients is None:
            raise ExecutionError(
                "the number of clients cannot be inferred, since no argument is placed at CLIENTS; "
                "set it with ReferenceExecutor(num_clients=N)"
            )
        return self._num_clients

    def evaluate(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        match node:
            case bb.Reference(name=name):
                return env[name]
            case bb.Selection(source=source, index=index):
                return self.evaluate(source, env)[index]
            case bb.Struct(elements=elements):
                return Struct([(n, self.evaluate(e, env)) for n, e in elements])
            case bb.Call(function=fn_node, argument=arg_node):
                fn = self.evaluate(fn_node, env)
                if arg_node is None:
                    return fn()
                arg = self.evaluate(arg_node, env)
                arg = self.coerce(arg, arg_node.type_signature, fn_node.type_signature.parameter)
                return fn(arg)
            case bb.Lambda(parameter_name=p, result=result):
                if p is None:
                    return lambda: self.evaluate(result, env)
                return lambda arg: self.evaluate(result, {**env, p: arg})
            case bb.Block(locals=locals_, result=result):
                scope = dict(env)
                for name, value in locals_:
                    scope[name] = self.evaluate(value, scope)
                return self.evaluate(result, scope)
            case bb.Intrinsic(uri=uri, type_signature=t):
                from fedcore.compiler.intrinsics import lookup

                rule = lookup(uri).rules[NAME]
                if isinstance(t, FunctionType):
                    return lambda arg=None: rule(self, arg, t)
                return rule(self, None, t)
            case bb.Literal(value=value):
                return value
            case bb.Placement(placement=p):
                return p
            case bb.Data(uri=uri):
                if uri not in self.data:
                    raise ExecutionError(f"no value was supplied for data#{uri}")
                return self.data[uri]
            case bb.TensorFlowComputation():
                return lambda arg=None: call_tf(node, arg)
        raise ExecutionError(f"the reference interpreter cannot evaluate {node!r}")

    def coerce(self, value: Any, source: Type, target: Optional[Type]) -> Any:
        """Converts between representations of assignable types (all-equal to per-client)."""
        if target is None or source == target:
            return value
        match source, target:
            case FederatedType(all_equal=True), FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                return [value] * self.num_clients
            case StructType(), StructType():
                return Struct([(n, self.coerce(v, s, t)) for (n, t), v, s in zip(target.elements, value, source)])
        return value

    def client_values(self, value: Any, t: FederatedType) -> List[Any]:
        """The per-client list of a CLIENTS value, replicating an all-equal one."""
        return [value] * self.num_clients if t.all_equal else list(value)


# --------------------------------------------------------------------------
# TensorFlow computations.


def call_tf(node: bb.TensorFlowComputation, arg: Any) -> Any:
    parameter = node.type_signature.parameter
    leaves = [] if parameter is None else to_tf_leaves(arg, parameter)
    return tf_bridge.unflatten(node.function.call_leaves(leaves), node.type_signature.result, from_tf_leaf)


# --------------------------------------------------------------------------
# Structural helpers on canonical values.


def zero(t: Type) -> Any:
    match t:
        case TensorType(shape=shape):
            if shape is None or any(d is None for d in shape):
                raise ExecutionError(f"cannot build a zero of type {t}, whose shape is not fully known")
            return np.zeros(shape, t.np_dtype)
        case StructType():
            return Struct([(n, zero(e)) for n, e in t.elements])
    raise ExecutionError(f"cannot build a zero of type {t}")


def _fill(t: Type, fn: Callable[[TensorType], Any]) -> Any:
    match t:
        case TensorType(shape=shape):
            if shape is None or any(d is None for d in shape):
                raise ExecutionError(f"cannot build a value of type {t}, whose shape is not fully known")
            return np.full(shape, fn(t), t.np_dtype)
        case StructType():
            return Struct([(n, _fill(e, fn)) for n, e in t.elements])
    raise ExecutionError(f"cannot build a value of type {t}")


def reduce_leaves(values: List[Any], t: Type, fn: Callable[[np.ndarray, TensorType], np.ndarray]) -> Any:
    """Applies ``fn`` to the stacked leaves of ``values`` (a non-empty list) at each tensor of ``t``."""
    match t:
        case TensorType():
            return np.asarray(fn(np.stack([np.asarray(v) for v in values]), t)).astype(t.np_dtype)
        case StructType():
            return Struct([(n, reduce_leaves([v[i] for v in values], e, fn)) for i, (n, e) in enumerate(t.elements)])
    raise ExecutionError(f"cannot aggregate values of type {t}")


def _sum(stacked: np.ndarray, t: TensorType) -> np.ndarray:
    if stacked.dtype.kind == "f":
        return np.sum(stacked, axis=0, dtype=np.float64)
    return np.sum(stacked, axis=0, dtype=stacked.dtype)


def plus(values: List[Any], t: Type) -> Any:
    return reduce_leaves(values, t, _sum) if values else zero(t)


def _lowest(t: TensorType):
    dtype = t.np_dtype
    return -np.inf if dtype.kind in "fc" else np.iinfo(dtype).min


def _highest(t: TensorType):
    dtype = t.np_dtype
    return np.inf if dtype.kind in "fc" else np.iinfo(dtype).max


# --------------------------------------------------------------------------
# Intrinsic rules.

rule = functools.partial(register_rule, NAME)


@rule("federated_value_at_server")
@rule("federated_value_at_clients")
@rule("federated_broadcast")
def _identity(interp, arg, t):
    return arg


@rule("federated_eval_at_server")
def _eval_at_server(interp, fn, t):
    return fn()


@rule("federated_eval_at_clients")
def _eval_at_clients(interp, fn, t):
    return [fn() for _ in range(interp.num_clients)]


@rule("federated_map")
def _map(interp, arg, t):
    fn, values = arg
    return [fn(v) for v in interp.client_values(values, t.parameter[1])]


@rule("federated_map_all_equal")
@rule("federated_apply")
def _apply(interp, arg, t):
    fn, value = arg
    return fn(value)


@rule("federated_zip_at_clients")
def _zip_at_clients(interp, arg, t):
    columns = [interp.client_values(v, e) for v, e in zip(arg, t.parameter)]
    names = t.parameter.names()
    return [Struct(zip(names, row)) for row in zip(*columns)] if columns else []


@rule("federated_zip_at_server")
def _zip_at_server(interp, arg, t):
    return Struct(zip(t.parameter.names(), arg))


@rule("federated_sum")
def _federated_sum(interp, arg, t):
    member = t.result.member
    return plus(interp.client_values(arg, t.parameter), member)


@rule("federated_mean")
def _federated_mean(interp, arg, t):
    member = t.result.member
    values = interp.client_values(arg, t.parameter)
    if not values:
        return _fill(member, lambda _: np.nan)
    return reduce_leaves(values, member, lambda s, _: np.sum(s, axis=0, dtype=np.float64) / len(values))


@rule("federated_weighted_mean")
def _federated_weighted_mean(interp, arg, t):
    value_type, weight_type = t.parameter
    member = t.result.member
    values = interp.client_values(arg[0], value_type)
    weights = [float(np.asarray(w)) for w in interp.client_values(arg[1], weight_type)]
    if not values:
        return _fill(member, lambda _: np.nan)
    total = float(np.sum(np.asarray(weights, np.float64)))

    def weighted(stacked, _):
        w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (stacked.ndim - 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(stacked.astype(np.float64) * w, axis=0) / total

    return reduce_leaves(values, member, weighted)


def _extremum(identity: Callable[[TensorType], Any], reduce: Callable):
    """min or max over clients; over zero clients, the identity of the operation."""

    def apply(interp, arg, t):
        values = interp.client_values(arg, t.parameter)
        if not values:
            return _fill(t.result.member, identity)
        return reduce_leaves(values, t.result.member, lambda s, _: reduce(s, axis=0))

    return apply


rule("federated_min")(_extremum(_highest, np.min))
rule("federated_max")(_extremum(_lowest, np.max))


@rule("federated_aggregate")
def _federated_aggregate(interp, arg, t):
    values, zero_value, accumulate, merge, report = arg
    accumulator = zero_value
    for v in interp.client_values(values, t.parameter[0]):
        accumulator = accumulate(Struct.unnamed(accumulator, v))
    return report(accumulator)


@rule("federated_secure_sum")
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


@rule("sequence_map")
def _sequence_map(interp, arg, t):
    fn, seq = arg
    return [fn(e) for e in sequence_elements(seq, t.parameter[1].element)]


@rule("sequence_reduce")
def _sequence_reduce(interp, arg, t):
    seq, accumulator, op = arg
    for e in sequence_elements(seq, t.parameter[0].element):
        accumulator = op(Struct.unnamed(accumulator, e))
    return accumulator


@rule("sequence_sum")
def _sequence_sum(interp, seq, t):
    return plus(sequence_elements(seq, t.parameter.element), t.result)


@rule("generic_plus")
def _generic_plus(interp, arg, t):
    return plus([arg[0], arg[1]], t.result)


@rule("generic_zero")
def _generic_zero(interp, arg, t):
    return zero(t)

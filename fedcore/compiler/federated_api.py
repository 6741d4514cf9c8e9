"""The public intrinsic functions, used inside federated computations.

Each one converts its arguments to IR nodes, type-checks them against the
intrinsic's generic signature from the registry, and appends a typed call to
the current tracing context.
"""

from __future__ import annotations

from typing import Any, Optional

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import context
from fedcore.compiler.computation import tf_computation
from fedcore.compiler.tracing import Value, call_intrinsic, map_uri, to_node
from fedcore.compiler.tracing import require_tracing as _require_tracing
from fedcore.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    Type,
    to_placement,
)


def _federated(value: Any, name: str, placement: Optional[Any] = None) -> bb.BuildingBlock:
    """The IR node of a federated argument of intrinsic ``name``.

    As in TFF, a struct of federated values with one placement (a tuple, list,
    dict or named tuple of them, or a traced struct) is zipped into one
    federated struct first, as ``federated_zip`` does.  ``placement``, when
    given, is where the (zipped) value must be placed.
    """
    _require_tracing(name.split(" ")[0])
    node = to_node(value, f"argument of {name}")
    t = node.type_signature
    if isinstance(t, StructType):
        node = _zip_if_needed(node, name)
        if placement is not None and node.type_signature.placement is not placement:
            raise context.type_error(
                f"{name} expects a value placed at {placement}; its argument {t} is a struct of values placed at "
                f"{node.type_signature.placement}, which zips to {node.type_signature}"
            )
    elif not isinstance(t, FederatedType):
        raise context.type_error(
            f"{name} expects a federated value (or a struct of federated values placed alike, which it zips "
            f"as federated_zip does), got a value of type {t}"
        )
    return node


def _zip_if_needed(node: bb.BuildingBlock, name: str) -> bb.BuildingBlock:
    """``federated_zip(node)`` for a struct of federated values of one placement; a clear error otherwise."""
    t = node.type_signature
    what = f"{name} expects a federated value, or a struct of federated values placed alike, which it zips"
    if len(t) == 0:
        raise context.type_error(f"{what}; got the empty struct {t}")
    placements = {}
    for i, (element_name, element) in enumerate(t.elements):
        label = f"element {element_name!r}" if element_name else f"element {i}"
        if isinstance(element, StructType) and element and all(isinstance(e, FederatedType) for e in element):
            raise context.type_error(
                f"{what}; got {t}, whose {label} is itself a struct of federated values ({element}); "
                "zip that one first with federated_zip"
            )
        if not isinstance(element, FederatedType):
            raise context.type_error(
                f"{what}; got {t}, whose {label} has the unplaced type {element}; place it first, e.g. with "
                "federated_value(v, SERVER) or federated_value(v, CLIENTS), then zip with federated_zip"
            )
        placements.setdefault(element.placement, label)
    if len(placements) > 1:
        at = " and ".join(f"{p} ({label})" for p, label in placements.items())
        raise context.type_error(
            f"{what}; got {t}, whose elements are placed at {at}: federated_zip needs one placement; "
            "move server values to the clients with federated_broadcast first"
        )
    return federated_zip(Value(node))._node


def _map_error_hint(fn_node: bb.BuildingBlock, value_type: FederatedType) -> Optional[str]:
    """A hint for a function whose parameter is a struct while the mapped members are not."""
    fn_type = fn_node.type_signature
    if not isinstance(fn_type, FunctionType) or not isinstance(fn_type.parameter, StructType):
        return None
    if isinstance(value_type.member, StructType) or len(fn_type.parameter) < 2:
        return None
    return (
        f"the function takes {fn_type.parameter} but each member is {value_type.member}; to map over several "
        "federated values at once, pass them together, e.g. federated_map(fn, (x, y)), which zips them as "
        "federated_zip does"
    )


def _map_call(uri: str, fn_node: bb.BuildingBlock, node: bb.BuildingBlock, public_name: str) -> Value:
    hint = _map_error_hint(fn_node, node.type_signature)
    try:
        return call_intrinsic(uri, _struct(fn_node, node), public_name)
    except context.FederatedTypeError as e:
        if hint is None:
            raise
        message, _, where = str(e).partition("\n")
        raise context.FederatedTypeError(f"{message}; {hint}" + (f"\n{where}" if where else "")) from None


def function_node(fn: Any, parameter_type: Optional[Type], name: str) -> bb.BuildingBlock:
    """A function node for ``fn``: a computation, a polymorphic one specialized at
    ``parameter_type``, or a plain Python function traced as a tf_computation."""
    if isinstance(fn, Value):
        return fn._node
    specialize = getattr(fn, "_fedcore_specialize", None)
    if specialize is not None:
        return specialize(parameter_type)._fedcore_ir()
    ir = getattr(fn, "_fedcore_ir", None)
    if ir is not None:
        return ir()
    if callable(fn):
        if parameter_type is None:
            return tf_computation(fn)._fedcore_ir()
        return tf_computation(fn, parameter_type)._fedcore_ir()
    raise context.type_error(f"{name} expects a function, got {fn!r}")


def _struct(*nodes: bb.BuildingBlock) -> bb.Struct:
    return bb.Struct([(None, n) for n in nodes])


def federated_value(value: Any, placement: Any) -> Value:
    """Places an unplaced value at the server or at all clients.

    ``T -> T@SERVER`` or ``T -> T@CLIENTS`` (all clients hold the same value).

    Args:
        value: an unplaced value: a Python or NumPy value, a tensor, or a traced unplaced value.
        placement: ``fedcore.SERVER`` or ``fedcore.CLIENTS`` (or ``"SERVER"``, ``"CLIENTS"``).

    Returns:
        The placed value, in the computation being traced.

    Raises:
        FederatedTypeError: when ``placement`` is not a placement or ``value`` is already placed.
        RuntimeError: when called outside a federated computation being traced.
    """
    _require_tracing("federated_value")
    try:
        placement = to_placement(placement)
    except ValueError as e:
        raise context.type_error(f"federated_value: {e}") from None
    uri = "federated_value_at_server" if placement is SERVER else "federated_value_at_clients"
    return call_intrinsic(uri, to_node(value, "argument of federated_value"), "federated_value")


def federated_broadcast(value: Any) -> Value:
    """Sends a server value to every client: ``T@SERVER -> T@CLIENTS`` (all equal).

    Args:
        value: a value placed at the server.

    Returns:
        The value at the clients, in the computation being traced.

    Raises:
        FederatedTypeError: when ``value`` is not placed at the server.
        RuntimeError: when called outside a federated computation being traced.
    """
    return call_intrinsic("federated_broadcast", _federated(value, "federated_broadcast", SERVER))


def federated_eval(fn: Any, placement: Any) -> Value:
    """Runs a no-argument function at a placement: ``( -> T)`` to ``T@SERVER`` or ``{T}@CLIENTS``.

    Args:
        fn: a computation or Python function without parameters.
        placement: ``fedcore.SERVER`` or ``fedcore.CLIENTS``.

    Returns:
        What ``fn`` returns, placed at ``placement``.

    Raises:
        FederatedTypeError: when ``placement`` is not a placement or ``fn`` takes arguments.
        RuntimeError: when called outside a federated computation being traced.
    """
    _require_tracing("federated_eval")
    try:
        placement = to_placement(placement)
    except ValueError as e:
        raise context.type_error(f"federated_eval: {e}") from None
    uri = "federated_eval_at_server" if placement is SERVER else "federated_eval_at_clients"
    return call_intrinsic(uri, function_node(fn, None, "federated_eval"), "federated_eval")


def federated_map(fn: Any, value: Any) -> Value:
    """Applies ``fn`` to each member: ``<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS`` (or at the server).

    Args:
        fn: a computation, or a Python function (traced as a ``tf_computation`` at the
            member type of ``value``).
        value: a federated value, or a struct of federated values placed alike (zipped first).

    Returns:
        The results, placed where ``value`` is.

    Raises:
        FederatedTypeError: when ``value`` is not federated or ``fn`` does not accept its member type.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _federated(value, "federated_map")
    fn_node = function_node(fn, node.type_signature.member, "federated_map")
    return _map_call(map_uri(node.type_signature), fn_node, node, "federated_map")


def federated_apply(fn: Any, value: Any) -> Value:
    """Applies ``fn`` to a server value: ``<(T -> U),T@SERVER> -> U@SERVER``.

    Args:
        fn: a computation, or a Python function traced at the member type of ``value``.
        value: a value placed at the server.

    Returns:
        The result at the server.

    Raises:
        FederatedTypeError: when ``value`` is not at the server or ``fn`` does not accept its member type.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _federated(value, "federated_apply", SERVER)
    fn_node = function_node(fn, node.type_signature.member, "federated_apply")
    return _map_call("federated_apply", fn_node, node, "federated_apply")


def federated_zip(value: Any) -> Value:
    """Turns a struct of federated values into a federated struct: ``<{A}@CLIENTS,{B}@CLIENTS> -> {<A,B>}@CLIENTS``.

    Works at the server too (``<A@SERVER,B@SERVER> -> <A,B>@SERVER``); names are kept.

    Args:
        value: a non-empty struct (tuple, list, dict, named tuple or traced struct) of
            federated values with one placement.

    Returns:
        The federated struct.

    Raises:
        FederatedTypeError: when ``value`` is not a non-empty struct of federated values placed alike.
        RuntimeError: when called outside a federated computation being traced.
    """
    _require_tracing("federated_zip")
    node = to_node(value, "argument of federated_zip")
    t = node.type_signature
    if not isinstance(t, StructType) or len(t) == 0 or not isinstance(t[0], FederatedType):
        raise context.type_error(f"federated_zip expects a non-empty struct of federated values, got {t}")
    uri = "federated_zip_at_server" if t[0].placement is SERVER else "federated_zip_at_clients"
    return call_intrinsic(uri, node, "federated_zip")


def federated_sum(value: Any) -> Value:
    """The sum of the client values at the server: ``{T}@CLIENTS -> T@SERVER``.

    Args:
        value: a value placed at the clients, of numeric tensors or structs of them.

    Returns:
        The element-wise sum, at the server.

    Raises:
        FederatedTypeError: when ``value`` is not placed at the clients or is not numeric.
        RuntimeError: when called outside a federated computation being traced.
    """
    return call_intrinsic("federated_sum", _federated(value, "federated_sum", CLIENTS))


def federated_mean(value: Any, weight: Any = None) -> Value:
    """The mean of the client values at the server: ``{T}@CLIENTS -> T@SERVER``.

    Args:
        value: a value placed at the clients, of floating-point tensors or structs of them.
        weight: optional numeric client weights (``{float32}@CLIENTS``, for example);
            without it, every client counts the same.

    Returns:
        The (weighted) mean, at the server.

    Raises:
        FederatedTypeError: when ``value`` or ``weight`` is not placed at the clients or not floating-point.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _federated(value, "federated_mean", CLIENTS)
    if weight is None:
        return call_intrinsic("federated_mean", node)
    weight_node = _federated(weight, "federated_mean (weight)", CLIENTS)
    return call_intrinsic("federated_weighted_mean", _struct(node, weight_node), "federated_mean")


def federated_min(value: Any) -> Value:
    """The element-wise minimum of the client values at the server: ``{T}@CLIENTS -> T@SERVER``.

    Args:
        value: a value placed at the clients, of numeric tensors or structs of them.

    Returns:
        The minimum, at the server.

    Raises:
        FederatedTypeError: when ``value`` is not placed at the clients or is not numeric.
        RuntimeError: when called outside a federated computation being traced.
    """
    return call_intrinsic("federated_min", _federated(value, "federated_min", CLIENTS))


def federated_max(value: Any) -> Value:
    """The element-wise maximum of the client values at the server: ``{T}@CLIENTS -> T@SERVER``.

    Args:
        value: a value placed at the clients, of numeric tensors or structs of them.

    Returns:
        The maximum, at the server.

    Raises:
        FederatedTypeError: when ``value`` is not placed at the clients or is not numeric.
        RuntimeError: when called outside a federated computation being traced.
    """
    return call_intrinsic("federated_max", _federated(value, "federated_max", CLIENTS))


def federated_aggregate(value: Any, zero: Any, accumulate: Any, merge: Any, report: Any) -> Value:
    """Folds the client values into accumulators, merges them, and reports at the server.

    ``<{V}@CLIENTS,A,(<A,V> -> A),(<A,A> -> A),(A -> R)> -> R@SERVER``.

    Args:
        value: a value placed at the clients (``{V}@CLIENTS``).
        zero: the initial accumulator (unplaced, type ``A``).
        accumulate: ``<A,V> -> A``, adding one client value to an accumulator.
        merge: ``<A,A> -> A``, merging two accumulators.
        report: ``A -> R``, turning the final accumulator into the result.

    Returns:
        The report, at the server.

    Raises:
        FederatedTypeError: when a function does not accept the types above.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _federated(value, "federated_aggregate", CLIENTS)
    zero_node = to_node(zero, "zero of federated_aggregate")
    a, v = zero_node.type_signature, node.type_signature.member
    acc_node = function_node(accumulate, StructType([(None, a), (None, v)]), "federated_aggregate accumulate")
    # The accumulator type is what accumulate returns, which may generalize zero's.
    if isinstance(acc_node.type_signature, FunctionType):
        a = acc_node.type_signature.result
    merge_node = function_node(merge, StructType([(None, a), (None, a)]), "federated_aggregate merge")
    report_node = function_node(report, a, "federated_aggregate report")
    return call_intrinsic("federated_aggregate", _struct(node, zero_node, acc_node, merge_node, report_node))


def federated_secure_sum(value: Any, max_input: Any) -> Value:
    """Sums integer client values, each at most ``max_input``, without revealing any one of them.

    ``<{T}@CLIENTS,T> -> T@SERVER`` for integer ``T``.

    Args:
        value: integer values placed at the clients.
        max_input: the bound of each client's value (a scalar or one per element).

    Returns:
        The sum, at the server.

    Raises:
        FederatedTypeError: when ``value`` is not integer values at the clients or ``max_input`` does not match it.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _federated(value, "federated_secure_sum", CLIENTS)
    max_node = to_node(max_input, "max_input of federated_secure_sum")
    return call_intrinsic("federated_secure_sum", _struct(node, max_node))


def _sequence(value: Any, name: str) -> bb.BuildingBlock:
    _require_tracing(name)
    node = to_node(value, f"argument of {name}")
    if not isinstance(node.type_signature, SequenceType):
        raise context.type_error(f"{name} expects a sequence, got a value of type {node.type_signature}")
    return node


def sequence_map(fn: Any, value: Any) -> Value:
    """Applies ``fn`` to each element of a sequence: ``<(T -> U),T*> -> U*``.

    Args:
        fn: a computation, or a Python function traced at the element type.
        value: an unplaced sequence (``T*``).

    Returns:
        The sequence of results.

    Raises:
        FederatedTypeError: when ``value`` is not a sequence or ``fn`` does not accept its elements.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _sequence(value, "sequence_map")
    fn_node = function_node(fn, node.type_signature.element, "sequence_map")
    return call_intrinsic("sequence_map", _struct(fn_node, node))


def sequence_reduce(value: Any, zero: Any, op: Any) -> Value:
    """Folds a sequence into one value: ``<T*,U,(<U,T> -> U)> -> U``.

    Args:
        value: an unplaced sequence (``T*``).
        zero: the initial value (type ``U``).
        op: ``<U,T> -> U``, adding one element to the running value.

    Returns:
        The reduced value.

    Raises:
        FederatedTypeError: when ``value`` is not a sequence or ``op`` does not accept ``<U,T>``.
        RuntimeError: when called outside a federated computation being traced.
    """
    node = _sequence(value, "sequence_reduce")
    zero_node = to_node(zero, "zero of sequence_reduce")
    op_node = function_node(
        op, StructType([(None, zero_node.type_signature), (None, node.type_signature.element)]), "sequence_reduce"
    )
    return call_intrinsic("sequence_reduce", _struct(node, zero_node, op_node))


def sequence_sum(value: Any) -> Value:
    """The sum of a sequence's elements: ``T* -> T``.

    Args:
        value: an unplaced sequence of numeric tensors or structs of them.

    Returns:
        The sum.

    Raises:
        FederatedTypeError: when ``value`` is not a sequence of numeric values.
        RuntimeError: when called outside a federated computation being traced.
    """
    return call_intrinsic("sequence_sum", _sequence(value, "sequence_sum"))


__all__ = [
    "CLIENTS",
    "SERVER",
    "federated_aggregate",
    "federated_apply",
    "federated_broadcast",
    "federated_eval",
    "federated_map",
    "federated_max",
    "federated_mean",
    "federated_min",
    "federated_secure_sum",
    "federated_sum",
    "federated_value",
    "federated_zip",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
]

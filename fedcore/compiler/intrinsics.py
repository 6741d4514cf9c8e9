"""The intrinsic registry: the single source of truth for every intrinsic.

Each intrinsic is declared once, with its generic signature in the type
notation.  The type checker instantiates that signature by unification.
Executors add their own implementation of an intrinsic to its ``rules``
table, keyed by executor name (see ``register_rule``).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import attrs

from fedcore.types import (
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    UnificationError,
    parse,
    substitute,
    unify,
)
from fedcore.types.core import CLIENTS, SERVER, find_forbidden

TypeRule = Callable[[Type], Type]


@attrs.define
class IntrinsicDef:
    """One intrinsic: its name, its generic signature, and executor rules."""

    uri: str
    signature: str
    doc: str
    # Optional extra check or inference for signatures unification can't express.
    infer: Optional[Callable[["IntrinsicDef", Optional[Type]], FunctionType]] = None
    rules: Dict[str, Callable] = attrs.field(factory=dict)

    @property
    def generic_type(self) -> FunctionType:
        return parse(self.signature)

    def instantiate(self, argument_type: Optional[Type]) -> FunctionType:
        """Returns the concrete function type for an argument, or raises TypeError."""
        if self.infer is not None:
            return self.infer(self, argument_type)
        generic = self.generic_type
        if not isinstance(generic, FunctionType):
            raise TypeError(f"{self.uri} is not a function; use it at a concrete type, as Intrinsic({self.uri!r}, T)")
        if generic.parameter is None:
            if argument_type is not None:
                raise TypeError(f"{self.uri} takes no argument, got one of type {argument_type}")
            return generic
        if argument_type is None:
            raise TypeError(f"{self.uri} expects an argument of type {generic.parameter}, got none")
        try:
            bindings = unify(generic.parameter, argument_type)
        except UnificationError:
            raise TypeError(
                f"{self.uri} expects an argument of type {generic.parameter}, got {argument_type}"
            ) from None
        return FunctionType(argument_type, substitute(generic.result, bindings))


INTRINSICS: Dict[str, IntrinsicDef] = {}


def declare(uri: str, signature: str, doc: str, infer=None) -> IntrinsicDef:
    if uri in INTRINSICS:
        raise ValueError(f"intrinsic {uri} is already declared")
    definition = IntrinsicDef(uri, signature, doc, infer)
    definition.generic_type  # validates the signature text
    INTRINSICS[uri] = definition
    return definition


def lookup(uri: str) -> IntrinsicDef:
    try:
        return INTRINSICS[uri]
    except KeyError:
        raise ValueError(f"unknown intrinsic {uri!r}; known intrinsics are {', '.join(sorted(INTRINSICS))}") from None


def register_rule(executor: str, uri: str):
    """Decorator: registers ``executor``'s implementation of intrinsic ``uri``."""

    def decorator(fn):
        lookup(uri).rules[executor] = fn
        return fn

    return decorator


def missing_rules(executor: str) -> list:
    """The intrinsics that ``executor`` has no rule for."""
    return sorted(uri for uri, d in INTRINSICS.items() if executor not in d.rules)


# --------------------------------------------------------------------------
# Checks on members that unification alone cannot express.


def _numeric_leaves(t: Type, what: str, allow_int: bool = True) -> None:
    match t:
        case TensorType(dtype=dtype):
            if dtype in ("string", "bool"):
                raise TypeError(f"{what} needs numeric values, got {t}")
            if not allow_int and not (dtype.startswith("float") or dtype.startswith("bfloat") or dtype.startswith("complex")):
                raise TypeError(f"{what} needs floating-point values, got {t}")
        case StructType():
            for element in t:
                _numeric_leaves(element, what, allow_int)
        case _:
            raise TypeError(f"{what} needs tensors or structs of tensors, got {t}")


def _member_error(definition: IntrinsicDef, argument_type: Type, error: TypeError) -> TypeError:
    """A member check's complaint, with the expected and the actual argument types."""
    return TypeError(
        f"{error}: {definition.uri} expects an argument of type {definition.generic_type.parameter}, "
        f"got {argument_type}"
    )


def _with_numeric_member(check_float: bool):
    def infer(definition: IntrinsicDef, argument_type):
        result = IntrinsicDef.instantiate(attrs.evolve(definition, infer=None), argument_type)
        member = result.parameter if not isinstance(result.parameter, StructType) else result.parameter[0]
        if isinstance(member, FederatedType):
            member = member.member
        elif isinstance(member, SequenceType):  # sequence_sum: check the element type
            member = member.element
        try:
            _numeric_leaves(member, definition.uri, allow_int=not check_float)
        except TypeError as e:
            raise _member_error(definition, argument_type, e) from None
        return result

    return infer


def _infer_weighted_mean(definition: IntrinsicDef, argument_type):
    result = IntrinsicDef.instantiate(attrs.evolve(definition, infer=None), argument_type)
    value_type, weight_type = result.parameter[0].member, result.parameter[1].member
    try:
        _numeric_leaves(value_type, definition.uri, allow_int=False)
    except TypeError as e:
        raise _member_error(definition, argument_type, e) from None
    if not (isinstance(weight_type, TensorType) and weight_type.shape == () and weight_type.dtype not in ("string", "bool")):
        raise _member_error(
            definition, argument_type, TypeError(f"{definition.uri} needs a numeric scalar weight, got {weight_type}")
        )
    return result


def _infer_secure_sum(definition: IntrinsicDef, argument_type):
    result = IntrinsicDef.instantiate(attrs.evolve(definition, infer=None), argument_type)
    value_type, max_type = result.parameter[0].member, result.parameter[1]
    try:
        _check_integer_like(value_type, definition.uri)
        _check_integer_like(max_type, definition.uri + " max_input")
    except TypeError as e:
        raise _member_error(definition, argument_type, e) from None
    if isinstance(value_type, StructType) and isinstance(max_type, StructType) and len(value_type) != len(max_type):
        raise TypeError(f"{definition.uri}: max_input of type {max_type} does not match values of type {value_type}")
    return result


def _check_integer_like(t: Type, what: str) -> None:
    match t:
        case TensorType(dtype=dtype):
            if not dtype.startswith(("int", "uint")):
                raise TypeError(f"{what} needs integer values, got {t}")
        case StructType():
            for element in t:
                _check_integer_like(element, what)
        case _:
            raise TypeError(f"{what} needs integer tensors, got {t}")


def _infer_zip(placement):
    def infer(definition: IntrinsicDef, argument_type):
        if not isinstance(argument_type, StructType) or len(argument_type) == 0:
            raise TypeError(f"{definition.uri} expects a non-empty struct of values placed at {placement}, got {argument_type}")
        members = []
        all_equal = True
        for name, t in argument_type.elements:
            if not isinstance(t, FederatedType) or t.placement != placement:
                raise TypeError(
                    f"{definition.uri} expects every element to be placed at {placement}, got {t} in {argument_type}"
                )
            all_equal = all_equal and t.all_equal
            members.append((name, t.member))
        if placement is CLIENTS:
            all_equal = False
        member = StructType(members, container=argument_type.container)
        return FunctionType(argument_type, FederatedType(member, placement, all_equal))

    return infer


def _infer_value(placement):
    def infer(definition: IntrinsicDef, argument_type):
        if argument_type is None:
            raise TypeError(f"{definition.uri} needs a value")
        bad = find_forbidden(argument_type, (FederatedType,))
        if bad is not None or isinstance(argument_type, FunctionType):
            raise TypeError(f"{definition.uri} needs an unplaced value, got {argument_type}")
        return FunctionType(argument_type, FederatedType(argument_type, placement, True))

    return infer


# --------------------------------------------------------------------------
# The declarations.

FEDERATED_VALUE_AT_SERVER = declare(
    "federated_value_at_server", "(T -> T@SERVER)", "Places an unplaced value at the server.", _infer_value(SERVER)
)
FEDERATED_VALUE_AT_CLIENTS = declare(
    "federated_value_at_clients", "(T -> T@CLIENTS)", "Places an unplaced value at all clients.", _infer_value(CLIENTS)
)
FEDERATED_BROADCAST = declare(
    "federated_broadcast", "(T@SERVER -> T@CLIENTS)", "Sends the server's value to every client."
)
FEDERATED_EVAL_AT_SERVER = declare(
    "federated_eval_at_server", "(( -> T) -> T@SERVER)", "Runs a no-argument function at the server."
)
FEDERATED_EVAL_AT_CLIENTS = declare(
    "federated_eval_at_clients", "(( -> T) -> {T}@CLIENTS)", "Runs a no-argument function at every client."
)
FEDERATED_MAP = declare(
    "federated_map", "(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)", "Applies a function to each client's value."
)
FEDERATED_MAP_ALL_EQUAL = declare(
    "federated_map_all_equal",
    "(<(T -> U),T@CLIENTS> -> U@CLIENTS)",
    "Applies a function to a value that is equal at all clients.",
)
FEDERATED_APPLY = declare(
    "federated_apply", "(<(T -> U),T@SERVER> -> U@SERVER)", "Applies a function to the server's value."
)
FEDERATED_ZIP_AT_CLIENTS = declare(
    "federated_zip_at_clients",
    "(<{T}@CLIENTS,{U}@CLIENTS> -> {<T,U>}@CLIENTS)",
    "Turns a struct of client values into client values of a struct (any number of elements).",
    _infer_zip(CLIENTS),
)
FEDERATED_ZIP_AT_SERVER = declare(
    "federated_zip_at_server",
    "(<T@SERVER,U@SERVER> -> <T,U>@SERVER)",
    "Turns a struct of server values into a server value of a struct (any number of elements).",
    _infer_zip(SERVER),
)
FEDERATED_SUM = declare(
    "federated_sum", "({T}@CLIENTS -> T@SERVER)", "Sums client values at the server.", _with_numeric_member(False)
)
FEDERATED_MEAN = declare(
    "federated_mean", "({T}@CLIENTS -> T@SERVER)", "Averages client values at the server.", _with_numeric_member(True)
)
FEDERATED_WEIGHTED_MEAN = declare(
    "federated_weighted_mean",
    "(<{T}@CLIENTS,{W}@CLIENTS> -> T@SERVER)",
    "Averages client values weighted by a per-client scalar weight.",
    _infer_weighted_mean,
)
FEDERATED_MIN = declare(
    "federated_min", "({T}@CLIENTS -> T@SERVER)", "Element-wise minimum of client values.", _with_numeric_member(False)
)
FEDERATED_MAX = declare(
    "federated_max", "({T}@CLIENTS -> T@SERVER)", "Element-wise maximum of client values.", _with_numeric_member(False)
)
FEDERATED_AGGREGATE = declare(
    "federated_aggregate",
    "(<{V}@CLIENTS,A,(<A,V> -> A),(<A,A> -> A),(A -> R)> -> R@SERVER)",
    "General aggregation: fold client values into an accumulator, merge, report.",
)
FEDERATED_SECURE_SUM = declare(
    "federated_secure_sum",
    "(<{V}@CLIENTS,M> -> V@SERVER)",
    "Sums integer client values each bounded by max_input.",
    _infer_secure_sum,
)
SEQUENCE_MAP = declare("sequence_map", "(<(T -> U),T*> -> U*)", "Applies a function to each element of a sequence.")
SEQUENCE_REDUCE = declare(
    "sequence_reduce", "(<T*,U,(<U,T> -> U)> -> U)", "Folds a sequence into an accumulator."
)
SEQUENCE_SUM = declare("sequence_sum", "(T* -> T)", "Sums the elements of a sequence.", _with_numeric_member(False))
GENERIC_PLUS = declare("generic_plus", "(<T,T> -> T)", "Element-wise sum of two structurally equal values.")
GENERIC_ZERO = declare("generic_zero", "T", "The zero of a type; instantiated at a concrete type.")


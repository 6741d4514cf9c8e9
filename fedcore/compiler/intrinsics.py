"""Intrinsics: each one declared once, with everything the compiler and executors need to know.

A definition carries its name, its generic signature in the type notation
(the type checker instantiates it by unification), its *kind* (what sort of
federated operation it is), the placement it writes, and, for aggregations,
its algebra: one ``fedcore.compiler.algebra.Monoid``.  Passes, forms and
executors ask these; nothing else keeps lists of intrinsic names.

Each interpretation of the intrinsics (the reference interpreter, the TF
lowering, its vectorized lowering, Ray) keeps its own ``RuleTable``, keyed by
the definition, as JAX keys its rule tables by the primitive.
"""

from __future__ import annotations

import enum
from typing import Callable, Dict, Iterable, List, Optional

import attrs

from fedcore.compiler import algebra
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
from fedcore.types.core import CLIENTS, SERVER, Placement, find_forbidden


class Kind(enum.Enum):
    """What sort of operation an intrinsic is."""

    VALUE = "value"          # places an unplaced value
    BROADCAST = "broadcast"  # sends the server's value to the clients
    EVAL = "eval"            # runs a no-argument function at a placement
    MAP = "map"              # applies a function to placed values, pointwise
    ZIP = "zip"              # a struct of placed values -> a placed struct
    AGGREGATE = "aggregate"  # clients -> server, by a monoid (the user's for federated_aggregate)
    SECURE = "secure"        # clients -> server, by a protocol that hides each client's value
    FUSED = "fused"          # an aggregate of a client map, in one pass (made by a compiler pass)
    SEQUENCE = "sequence"    # local work on a sequence
    GENERIC = "generic"      # local work on any structure


TypeRule = Callable[["IntrinsicDef", Optional[Type]], FunctionType]


@attrs.frozen(eq=False)
class IntrinsicDef:
    """One intrinsic.  Hashed by identity: rule tables are keyed by the definition itself.

    * ``placement``: where the intrinsic's result lives (None for local work).
    * ``broadcast``: it makes a value at the clients that no client computed.
    * ``monoid``: for an aggregation, its algebra (None for ``federated_aggregate``,
      whose accumulator functions are part of its argument).
    * ``client_operands``: for an aggregation, how many leading elements of its
      argument are client values zipped into one client input (None: the whole
      argument is the one client value).
    * ``base``: for a fused intrinsic, the aggregation it fuses with a map.
    """

    uri: str
    signature: str
    doc: str
    kind: Kind
    placement: Optional[Placement] = None
    infer: Optional[TypeRule] = None
    broadcast: bool = False
    monoid: Optional[algebra.Monoid] = None
    client_operands: Optional[int] = None
    base: Optional["IntrinsicDef"] = None

    @property
    def generic_type(self) -> Type:
        return parse(self.signature)

    @property
    def is_aggregation(self) -> bool:
        return self.kind in (Kind.AGGREGATE, Kind.SECURE, Kind.FUSED)

    def instantiate(self, argument_type: Optional[Type]) -> FunctionType:
        """Returns the concrete function type for an argument, or raises TypeError."""
        if self.infer is not None:
            return self.infer(self, argument_type)
        return _unify_signature(self, argument_type)

    def client_input_type(self, parameter: Type) -> Type:
        """The type of one client's input to this aggregation, given its parameter type."""
        if self.client_operands is None:
            return parameter.member
        if self.client_operands == 1:
            return parameter[0].member
        return StructType([(None, parameter[i].member) for i in range(self.client_operands)])

    def __repr__(self) -> str:
        return f"<intrinsic {self.uri}>"


def _unify_signature(definition: IntrinsicDef, argument_type: Optional[Type]) -> FunctionType:
    generic = definition.generic_type
    uri = definition.uri
    if not isinstance(generic, FunctionType):
        raise TypeError(f"{uri} is not a function; use it at a concrete type, as Intrinsic({uri!r}, T)")
    if generic.parameter is None:
        if argument_type is not None:
            raise TypeError(f"{uri} takes no argument, got one of type {argument_type}")
        return generic
    if argument_type is None:
        raise TypeError(f"{uri} expects an argument of type {generic.parameter}, got none")
    try:
        bindings = unify(generic.parameter, argument_type)
    except UnificationError:
        raise TypeError(f"{uri} expects an argument of type {generic.parameter}, got {argument_type}") from None
    return FunctionType(argument_type, substitute(generic.result, bindings))


INTRINSICS: Dict[str, IntrinsicDef] = {}


def declare(uri: str, signature: str, doc: str, kind: Kind = Kind.GENERIC, **metadata) -> IntrinsicDef:
    """Declares an intrinsic; ``metadata`` are the other fields of ``IntrinsicDef``."""
    if uri in INTRINSICS:
        raise ValueError(f"intrinsic {uri} is already declared")
    definition = IntrinsicDef(uri, signature, doc, kind, **metadata)
    definition.generic_type  # validates the signature text
    INTRINSICS[uri] = definition
    return definition


def undeclare(definition: IntrinsicDef) -> None:
    """Removes a declaration (for tests and experiments that declare their own)."""
    if INTRINSICS.get(definition.uri) is definition:
        del INTRINSICS[definition.uri]
    _FUSED.pop(definition, None)
    fused = [f for f, d in _FUSED.items() if d is definition]
    for f in fused:
        del _FUSED[f]


def lookup(uri: str) -> IntrinsicDef:
    try:
        return INTRINSICS[uri]
    except KeyError:
        raise ValueError(f"unknown intrinsic {uri!r}; known intrinsics are {', '.join(sorted(INTRINSICS))}") from None


def definitions() -> List[IntrinsicDef]:
    return list(INTRINSICS.values())


# --------------------------------------------------------------------------
# Fused intrinsics: an aggregation of a client map, derived from the aggregation.

_FUSED: Dict[IntrinsicDef, IntrinsicDef] = {}


def declare_fused(base: IntrinsicDef) -> IntrinsicDef:
    """``<base>_of_map``: takes ``<(T -> V),{T}@CLIENTS, rest...>`` where ``base`` takes ``<{V}@CLIENTS, rest...>``.

    Its meaning is ``base(<federated_map(<f, x>), rest...>)``; executors run it
    without holding every client's mapped value at once.
    """
    if base.kind is not Kind.AGGREGATE:
        raise ValueError(f"only aggregations fuse with a map, not {base.uri}")
    parameter = base.generic_type.parameter
    mapped = FunctionType(parse("X"), parameter.member if base.client_operands is None else parameter[0].member)
    head = [(None, mapped), (None, FederatedType(parse("X"), CLIENTS))]
    rest = [] if base.client_operands is None else list(parameter.elements[1:])
    signature = str(FunctionType(StructType(head + rest), base.generic_type.result))
    fused = declare(f"{base.uri}_of_map", signature, f"{base.uri} of a federated_map, in one pass over clients.",
                    Kind.FUSED, placement=base.placement, infer=_infer_fused, base=base,
                    client_operands=base.client_operands)
    _FUSED[base] = fused
    return fused


def fused_of(base: IntrinsicDef) -> Optional[IntrinsicDef]:
    return _FUSED.get(base)


def unfused_argument_type(fused: IntrinsicDef, argument_type: Type) -> Type:
    """The base aggregation's argument type for a fused intrinsic's argument type."""
    fn_type, clients = argument_type[0], argument_type[1]
    mapped = FEDERATED_MAP.instantiate(StructType([(None, fn_type), (None, clients)])).result
    if fused.base.client_operands is None:
        return mapped
    return StructType([(None, mapped)] + list(argument_type.elements[2:]))


def _infer_fused(definition: IntrinsicDef, argument_type: Optional[Type]) -> FunctionType:
    if not (isinstance(argument_type, StructType) and len(argument_type) >= 2):
        raise TypeError(f"{definition.uri} expects an argument of type {definition.generic_type.parameter}, "
                        f"got {argument_type}")
    try:
        base_type = definition.base.instantiate(unfused_argument_type(definition, argument_type))
    except TypeError as e:
        raise TypeError(f"{definition.uri}: {e}") from None
    return FunctionType(argument_type, base_type.result)


# --------------------------------------------------------------------------
# Rule tables: one per interpretation.


class NoRule(LookupError):
    """An interpretation has no rule for an intrinsic."""


class RuleTable:
    """One interpretation's rules, keyed by the intrinsic definition.

    ``register(D)`` gives D a rule; ``register_kind(kind, make)`` gives every
    definition of a kind (present or declared later) the rule ``make(D)``,
    which is how one generic rule serves every monoid aggregation.
    """

    def __init__(self, name: str):
        self.name = name
        self._rules: Dict[IntrinsicDef, Callable] = {}
        self._by_kind: Dict[Kind, Callable[[IntrinsicDef], Callable]] = {}
        self._derived: Dict[IntrinsicDef, Callable] = {}

    def register(self, *defs: IntrinsicDef):
        """Decorator: the rule for each definition in ``defs``."""
        for d in defs:
            if not isinstance(d, IntrinsicDef):
                raise TypeError(f"rules are registered for intrinsic definitions, got {d!r}")

        def decorator(fn):
            for d in defs:
                self._rules[d] = fn
            return fn

        return decorator

    def register_kind(self, kind: Kind, make: Callable[[IntrinsicDef], Callable],
                      when: Callable[[IntrinsicDef], bool] = lambda d: True) -> None:
        """``make(D)`` is the rule of every definition D of ``kind`` for which ``when(D)`` holds."""
        previous = self._by_kind.get(kind)

        def chosen(d: IntrinsicDef):
            if when(d):
                return make(d)
            return previous(d) if previous is not None else None

        self._by_kind[kind] = chosen

    def get(self, definition: IntrinsicDef) -> Optional[Callable]:
        rule = self._rules.get(definition)
        if rule is not None:
            return rule
        rule = self._derived.get(definition)
        if rule is None and definition.kind in self._by_kind:
            rule = self._by_kind[definition.kind](definition)
            if rule is not None:
                self._derived[definition] = rule
        return rule

    def __getitem__(self, definition: IntrinsicDef) -> Callable:
        rule = self.get(definition)
        if rule is None:
            raise NoRule(f"the {self.name} rules have no rule for {definition.uri}")
        return rule

    def missing(self, among: Optional[Iterable[IntrinsicDef]] = None) -> List[str]:
        """The intrinsics (by uri) this table has no rule for."""
        return sorted(d.uri for d in (definitions() if among is None else among) if self.get(d) is None)

    def __repr__(self) -> str:
        return f"RuleTable({self.name!r})"


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
        result = _unify_signature(definition, argument_type)
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
    result = _unify_signature(definition, argument_type)
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
    result = _unify_signature(definition, argument_type)
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
    "federated_value_at_server", "(T -> T@SERVER)", "Places an unplaced value at the server.",
    Kind.VALUE, placement=SERVER, infer=_infer_value(SERVER),
)
FEDERATED_VALUE_AT_CLIENTS = declare(
    "federated_value_at_clients", "(T -> T@CLIENTS)", "Places an unplaced value at all clients.",
    Kind.VALUE, placement=CLIENTS, infer=_infer_value(CLIENTS), broadcast=True,
)
FEDERATED_BROADCAST = declare(
    "federated_broadcast", "(T@SERVER -> T@CLIENTS)", "Sends the server's value to every client.",
    Kind.BROADCAST, placement=CLIENTS, broadcast=True,
)
FEDERATED_EVAL_AT_SERVER = declare(
    "federated_eval_at_server", "(( -> T) -> T@SERVER)", "Runs a no-argument function at the server.",
    Kind.EVAL, placement=SERVER,
)
FEDERATED_EVAL_AT_CLIENTS = declare(
    "federated_eval_at_clients", "(( -> T) -> {T}@CLIENTS)", "Runs a no-argument function at every client.",
    Kind.EVAL, placement=CLIENTS,
)
FEDERATED_MAP = declare(
    "federated_map", "(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)", "Applies a function to each client's value.",
    Kind.MAP, placement=CLIENTS,
)
FEDERATED_MAP_ALL_EQUAL = declare(
    "federated_map_all_equal",
    "(<(T -> U),T@CLIENTS> -> U@CLIENTS)",
    "Applies a function to a value that is equal at all clients.",
    Kind.MAP, placement=CLIENTS,
)
FEDERATED_APPLY = declare(
    "federated_apply", "(<(T -> U),T@SERVER> -> U@SERVER)", "Applies a function to the server's value.",
    Kind.MAP, placement=SERVER,
)
FEDERATED_ZIP_AT_CLIENTS = declare(
    "federated_zip_at_clients",
    "(<{T}@CLIENTS,{U}@CLIENTS> -> {<T,U>}@CLIENTS)",
    "Turns a struct of client values into client values of a struct (any number of elements).",
    Kind.ZIP, placement=CLIENTS, infer=_infer_zip(CLIENTS),
)
FEDERATED_ZIP_AT_SERVER = declare(
    "federated_zip_at_server",
    "(<T@SERVER,U@SERVER> -> <T,U>@SERVER)",
    "Turns a struct of server values into a server value of a struct (any number of elements).",
    Kind.ZIP, placement=SERVER, infer=_infer_zip(SERVER),
)
FEDERATED_SUM = declare(
    "federated_sum", "({T}@CLIENTS -> T@SERVER)", "Sums client values at the server.",
    Kind.AGGREGATE, placement=SERVER, infer=_with_numeric_member(False), monoid=algebra.Sum(),
)
FEDERATED_MEAN = declare(
    "federated_mean", "({T}@CLIENTS -> T@SERVER)", "Averages client values at the server.",
    Kind.AGGREGATE, placement=SERVER, infer=_with_numeric_member(True), monoid=algebra.Mean(),
)
FEDERATED_WEIGHTED_MEAN = declare(
    "federated_weighted_mean",
    "(<{T}@CLIENTS,{W}@CLIENTS> -> T@SERVER)",
    "Averages client values weighted by a per-client scalar weight.",
    Kind.AGGREGATE, placement=SERVER, infer=_infer_weighted_mean, monoid=algebra.WeightedMean(), client_operands=2,
)
FEDERATED_MIN = declare(
    "federated_min", "({T}@CLIENTS -> T@SERVER)", "Element-wise minimum of client values.",
    Kind.AGGREGATE, placement=SERVER, infer=_with_numeric_member(False), monoid=algebra.Min(),
)
FEDERATED_MAX = declare(
    "federated_max", "({T}@CLIENTS -> T@SERVER)", "Element-wise maximum of client values.",
    Kind.AGGREGATE, placement=SERVER, infer=_with_numeric_member(False), monoid=algebra.Max(),
)
FEDERATED_AGGREGATE = declare(
    "federated_aggregate",
    "(<{V}@CLIENTS,A,(<A,V> -> A),(<A,A> -> A),(A -> R)> -> R@SERVER)",
    "General aggregation: fold client values into an accumulator, merge, report.",
    Kind.AGGREGATE, placement=SERVER, client_operands=1,
)
FEDERATED_SECURE_SUM = declare(
    "federated_secure_sum",
    "(<{V}@CLIENTS,M> -> V@SERVER)",
    "Sums integer client values each bounded by max_input.",
    Kind.SECURE, placement=SERVER, infer=_infer_secure_sum, client_operands=1,
)
SEQUENCE_MAP = declare(
    "sequence_map", "(<(T -> U),T*> -> U*)", "Applies a function to each element of a sequence.", Kind.SEQUENCE
)
SEQUENCE_REDUCE = declare(
    "sequence_reduce", "(<T*,U,(<U,T> -> U)> -> U)", "Folds a sequence into an accumulator.", Kind.SEQUENCE
)
SEQUENCE_SUM = declare(
    "sequence_sum", "(T* -> T)", "Sums the elements of a sequence.", Kind.SEQUENCE, infer=_with_numeric_member(False)
)
GENERIC_PLUS = declare("generic_plus", "(<T,T> -> T)", "Element-wise sum of two structurally equal values.")
GENERIC_ZERO = declare("generic_zero", "T", "The zero of a type; instantiated at a concrete type.")

# Every aggregation of a client map has its fused form (see ``declare_fused``).
FUSED = {d: declare_fused(d) for d in definitions() if d.kind is Kind.AGGREGATE}

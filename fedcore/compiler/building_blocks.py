"""The IR: a handful of immutable node types, each carrying its type signature.

Nodes compare by identity (they may be large); ``to_string(node)`` gives the
compact text form, e.g. ``(x -> federated_map(<comp#3f9a01c2,x>))``, and
``to_formatted_string(node)`` a multi-line one.  A TF computation prints as
``comp#`` and the first 8 hex digits of its function's content fingerprint, so
printed IR depends only on the program.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional, Protocol, Tuple

import attrs
import numpy as np

from fedcore.types import (
    FederatedType,
    FunctionType,
    Placement as PlacementLiteral,
    PlacementType,
    StructType,
    TensorType,
    Type,
)


@attrs.frozen
class SourceLocation:
    """Where in the user's code a node was traced."""

    filename: str
    lineno: int
    function: str = ""

    def __str__(self) -> str:
        where = f" in {self.function}" if self.function else ""
        return f"{self.filename}:{self.lineno}{where}"


class BuildingBlock:
    """Base of all IR nodes."""

    type_signature: Type

    def children(self) -> Tuple["BuildingBlock", ...]:
        return ()

    def __str__(self) -> str:
        return to_string(self)


def _source_field():
    return attrs.field(default=None, kw_only=True, eq=False, repr=False)


# Construction checks: a malformed node fails with a TypeError where it is built.
_is_node = attrs.validators.instance_of(BuildingBlock)
_is_optional_node = attrs.validators.optional(_is_node)
_is_type = attrs.validators.instance_of(Type)
_is_str = attrs.validators.instance_of(str)
_is_optional_str = attrs.validators.optional(_is_str)


def _check_named_nodes(names_optional: bool):
    def check(instance, attribute, items):
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"{attribute.name} must hold (name, node) pairs, got {item!r}")
            name, node = item
            if not (isinstance(name, str) or (names_optional and name is None)):
                raise TypeError(f"{attribute.name}: a name must be a string, got {name!r}")
            if not isinstance(node, BuildingBlock):
                raise TypeError(f"{attribute.name}: {name!r} must be bound to an IR node, got {node!r}")

    return check


@attrs.frozen(eq=False)
class Reference(BuildingBlock):
    """A name bound by an enclosing Lambda or Block."""

    name: str = attrs.field(validator=_is_str)
    type_signature: Type = attrs.field(validator=_is_type)
    source: Optional[SourceLocation] = _source_field()


@attrs.frozen(eq=False)
class Selection(BuildingBlock):
    """``source.name`` or ``source[index]`` of a struct.

    Give the index, the name, or both (they must then agree); the other is filled in.
    """

    source: BuildingBlock = attrs.field(validator=_is_node)
    index: Optional[int] = None
    name: Optional[str] = attrs.field(default=None, validator=_is_optional_str)
    type_signature: Type = attrs.field(init=False)
    loc: Optional[SourceLocation] = _source_field()

    def __attrs_post_init__(self):
        struct = self.source.type_signature
        what = repr(self.name) if self.index is None else self.index
        if not isinstance(struct, StructType):
            raise TypeError(f"cannot select element {what} from a value of type {struct}, which is not a struct")
        if self.index is None:
            if self.name is None:
                raise TypeError("a Selection needs an index or a name")
            if not struct.has_name(self.name):
                raise TypeError(f"a value of type {struct} has no element named {self.name!r}")
            object.__setattr__(self, "index", struct.index_of(self.name))
        elif not isinstance(self.index, int) or isinstance(self.index, bool):
            raise TypeError(f"a selection index must be an int, got {self.index!r}")
        elif not 0 <= self.index < len(struct):
            raise TypeError(f"index {self.index} is out of range for a value of type {struct}")
        elif self.name is not None and struct.elements[self.index][0] != self.name:
            raise TypeError(
                f"element {self.index} of a value of type {struct} is named "
                f"{struct.elements[self.index][0]!r}, not {self.name!r}"
            )
        object.__setattr__(self, "type_signature", struct[self.index])

    def children(self):
        return (self.source,)


@attrs.frozen(eq=False)
class Struct(BuildingBlock):
    """``<a=x,y>``: builds a struct from elements."""

    elements: Tuple[Tuple[Optional[str], BuildingBlock], ...] = attrs.field(
        converter=tuple, validator=_check_named_nodes(names_optional=True)
    )
    container: Optional[type] = attrs.field(default=None, kw_only=True)
    type_signature: Type = attrs.field(init=False)

    def __attrs_post_init__(self):
        object.__setattr__(
            self,
            "type_signature",
            StructType([(n, e.type_signature) for n, e in self.elements], container=self.container),
        )

    def children(self):
        return tuple(e for _, e in self.elements)


@attrs.frozen(eq=False)
class Call(BuildingBlock):
    """``fn(arg)`` or ``fn()``."""

    function: BuildingBlock = attrs.field(validator=_is_node)
    argument: Optional[BuildingBlock] = attrs.field(default=None, validator=_is_optional_node)
    type_signature: Type = attrs.field(init=False)
    source: Optional[SourceLocation] = _source_field()

    def __attrs_post_init__(self):
        fn_type = self.function.type_signature
        if not isinstance(fn_type, FunctionType):
            raise TypeError(f"cannot call a value of type {fn_type}, which is not a function")
        if fn_type.parameter is None:
            if self.argument is not None:
                raise TypeError(f"function of type {fn_type} takes no argument, got one of type {self.argument.type_signature}")
        else:
            if self.argument is None:
                raise TypeError(f"function of type {fn_type} needs an argument of type {fn_type.parameter}")
            if not fn_type.parameter.is_assignable_from(self.argument.type_signature):
                raise TypeError(
                    f"function of type {fn_type} expects an argument of type {fn_type.parameter}, "
                    f"got {self.argument.type_signature}"
                )
        object.__setattr__(self, "type_signature", fn_type.result)

    def children(self):
        return (self.function,) if self.argument is None else (self.function, self.argument)


@attrs.frozen(eq=False)
class Lambda(BuildingBlock):
    """``(x -> result)``; ``( -> result)`` when it takes no parameter."""

    parameter_name: Optional[str] = attrs.field(validator=_is_optional_str)
    parameter_type: Optional[Type] = attrs.field(validator=attrs.validators.optional(_is_type))
    result: BuildingBlock = attrs.field(validator=_is_node)
    type_signature: Type = attrs.field(init=False)

    def __attrs_post_init__(self):
        if (self.parameter_name is None) != (self.parameter_type is None):
            raise ValueError("a Lambda needs both a parameter name and type, or neither")
        object.__setattr__(self, "type_signature", FunctionType(self.parameter_type, self.result.type_signature))

    def children(self):
        return (self.result,)


@attrs.frozen(eq=False)
class Block(BuildingBlock):
    """``(let a=x,b=y in result)``: sequential let-bindings."""

    locals: Tuple[Tuple[str, BuildingBlock], ...] = attrs.field(
        converter=tuple, validator=_check_named_nodes(names_optional=False)
    )
    result: BuildingBlock = attrs.field(validator=_is_node)
    type_signature: Type = attrs.field(init=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "type_signature", self.result.type_signature)

    def children(self):
        return tuple(v for _, v in self.locals) + (self.result,)


@attrs.frozen(eq=False)
class Intrinsic(BuildingBlock):
    """A federated or sequence operator, e.g. ``federated_map``, at a concrete type."""

    uri: str = attrs.field(validator=_is_str)
    type_signature: Type = attrs.field(validator=_is_type)


@attrs.frozen(eq=False)
class Literal(BuildingBlock):
    """A tensor or string constant."""

    value: Any
    type_signature: Type

    def __attrs_post_init__(self):
        if not isinstance(self.type_signature, TensorType):
            raise TypeError(f"a literal must have a tensor type, got {self.type_signature}")


@attrs.frozen(eq=False)
class Placement(BuildingBlock):
    """A placement literal, ``SERVER`` or ``CLIENTS``."""

    placement: PlacementLiteral
    type_signature: Type = attrs.field(init=False, factory=PlacementType)


@attrs.frozen(eq=False)
class Data(BuildingBlock):
    """A value supplied at run time, named by ``uri``."""

    uri: str = attrs.field(validator=_is_str)
    type_signature: Type = attrs.field(validator=_is_type)


class TensorFlowFunction(Protocol):
    """What a TensorFlowComputation node refers to: a TF function, described as data.

    Implemented by ``fedcore.compiler.tf_function.TFFunction`` (traced from a
    user's code) and ``fedcore.compiler.serialization.ImportedTFFunction``
    (rebuilt from a GraphDef).  Executors use only these members.  Values
    cross as flat lists of leaves (tensors and ``tf.data.Dataset`` s) in
    fedcore's leaf order (``tf_bridge.flatten``).
    """

    name: str
    parameter_type: Optional[Type]
    result_type: Type

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the content: the canonical serialized GraphDef, inputs, outputs and types."""

    @property
    def writes_variables(self) -> bool:
        """Whether calls assign ``tf.Variable`` s they captured, and so must run one at a time, in order."""

    @property
    def creates_variables(self) -> bool:
        """Whether calls create ``tf.Variable`` s of their own (anew in each call: still pure, but not vectorizable)."""

    def call_leaves(self, leaves: List[Any]) -> List[Any]:
        """Runs the function eagerly on flat leaves; returns flat result leaves."""

    def graph_call(self, leaves: List[Any]) -> List[Any]:
        """Calls the function from inside another graph being traced, on flat leaves."""

    # Optional: ``masked_form``, another TensorFlowFunction that a reduction's step may carry (set by
    # ``computation.with_masked_form``): the step on a batch padded to more rows, told by a mask which
    # rows are real.  Executors may use it to run batches of different sizes as one batch size.


def _short_id(function: Any, name: str, type_signature: Type) -> str:
    fingerprint = getattr(function, "fingerprint", None)
    if not isinstance(fingerprint, str):  # a stand-in function (tests): named by what the node says
        fingerprint = hashlib.sha256(f"{name}:{type_signature}".encode()).hexdigest()
    return fingerprint[:8]


@attrs.frozen(eq=False)
class TensorFlowComputation(BuildingBlock):
    """A typed TensorFlow function.

    ``function`` is a ``TensorFlowFunction``.  ``id``, printed as ``comp#id``,
    is the first 8 hex digits of its fingerprint unless given (computed when
    first asked for).
    """

    function: Any
    type_signature: FunctionType = attrs.field(validator=attrs.validators.instance_of(FunctionType))
    name: str = ""
    _id: Optional[str] = attrs.field(default=None, alias="id", validator=_is_optional_str)

    @property
    def id(self) -> str:
        if self._id is None:
            object.__setattr__(self, "_id", _short_id(self.function, self.name, self.type_signature))
        return self._id


def literal(value: Any, dtype: Optional[str] = None) -> "Literal":
    """A Literal node for a Python or numpy constant.

    Python ints are int32, or int64 where they do not fit in int32, and Python floats are
    float32, as ``tf.constant`` makes them.  A constant that its type cannot hold exactly
    enough (an int beyond int64, a finite float that would become inf, a masked array, a
    string that is not valid Unicode) is a ValueError naming it, never a changed value.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise ValueError(
            "cannot use a masked array (numpy.ma) as a constant: a fedcore value has no mask; "
            "use value.filled(fill_value) or value.compressed()"
        )
    if isinstance(value, (str, bytes)):
        return Literal(_literal_string(value), TensorType("string"))
    if isinstance(value, bool):
        arr = np.asarray(value)
    elif isinstance(value, int) and not isinstance(value, np.generic) and dtype is None:
        if -(2**31) <= value < 2**31:
            arr = np.asarray(value, np.int32)
        elif -(2**63) <= value < 2**63:
            arr = np.asarray(value, np.int64)
        else:
            raise ValueError(f"the Python int {value} does not fit in int64 (range [{-(2**63)}, {2**63 - 1}])")
    elif isinstance(value, float) and not isinstance(value, np.generic) and dtype is None:
        # Python floats are float32, as in TF; np.float64 (a float subclass) keeps its dtype.
        with np.errstate(over="ignore"):
            arr = np.asarray(value, np.float32)
        if np.isfinite(value) and not np.isfinite(arr):
            raise ValueError(
                f"the Python float {value!r} does not fit in float32 (Python floats are float32 constants, whose "
                f"largest finite value is {float(np.finfo(np.float32).max):.8g}); use np.float64({value!r})"
            )
    else:
        try:
            arr = np.asarray(value) if dtype is None else np.asarray(value, dtype)
        except OverflowError as e:
            raise ValueError(f"cannot use {value!r} as a constant: {e}") from None
    if arr.dtype.kind in ("U", "S", "O"):
        items = arr.astype(object)
        if any(not isinstance(x, (str, bytes)) for x in items.reshape(-1).tolist()):
            raise ValueError(f"cannot use {value!r} as a constant: it holds values that are neither numbers nor strings")
        out = np.empty(items.shape, dtype=object)
        for index, item in np.ndenumerate(items):
            out[index] = _literal_string(item)
        return Literal(out, TensorType("string", arr.shape))
    return Literal(arr, TensorType(arr.dtype, arr.shape))


def _literal_string(value) -> str:
    try:
        text = value.decode() if isinstance(value, bytes) else value
        text.encode("utf-8")
    except UnicodeError as e:
        raise ValueError(f"cannot use the string {value!r} as a constant: it is not valid Unicode ({e.reason})") from None
    return text


# --------------------------------------------------------------------------
# Printing


def _literal_text(node: Literal) -> str:
    value = node.value
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        return repr(text)
    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        if isinstance(item, bool):
            return "true" if item else "false"
        return repr(item)
    return f"{np.array2string(arr, separator=',').replace(chr(10), '').replace(' ', '')}:{node.type_signature}"


def to_string(node: BuildingBlock, annotated: bool = False) -> str:
    """The compact one-line form of ``node``.

    With ``annotated``, lambda parameters and data carry their types, so that
    ``fedcore.compiler.ir_parser.parse_ir`` can read the text back.
    """

    def text(node: BuildingBlock) -> str:
        match node:
            case Reference(name=name):
                return name
            case Selection(source=source, index=index, name=name):
                base = text(source)
                return f"{base}.{name}" if name is not None else f"{base}[{index}]"
            case Struct(elements=elements):
                return "<" + ",".join(text(e) if n is None else f"{n}={text(e)}" for n, e in elements) + ">"
            case Call(function=fn, argument=arg):
                return f"{text(fn)}({'' if arg is None else text(arg)})"
            case Lambda(parameter_name=p, parameter_type=t, result=r):
                param = "" if p is None else (f"{p}:{t}" if annotated else p)
                return f"({param} -> {text(r)})"
            case Block(locals=locs, result=r):
                bindings = ",".join(f"{n}={text(v)}" for n, v in locs)
                return f"(let {bindings} in {text(r)})"
            case Intrinsic(uri=uri):
                return uri
            case Literal():
                return _literal_text(node)
            case Placement(placement=p):
                return p.name
            case Data(uri=uri, type_signature=t):
                return f"data#{uri}:{t}" if annotated else f"data#{uri}"
            case TensorFlowComputation(id=cid):
                return f"comp#{cid}"
        raise TypeError(f"not an IR node: {node!r}")

    return text(node)


def to_formatted_string(node: BuildingBlock, indent: int = 0) -> str:
    """A multi-line form: blocks put one binding per line, lambdas indent their body."""
    pad = "  " * indent
    match node:
        case Block(locals=locs, result=r):
            lines = ["(let"]
            for i, (n, v) in enumerate(locs):
                comma = "," if i < len(locs) - 1 else ""
                lines.append(f"{pad}  {n}={to_formatted_string(v, indent + 1)}{comma}")
            lines.append(f"{pad}in {to_formatted_string(r, indent + 1)})")
            return "\n".join(lines)
        case Lambda(parameter_name=p, result=r) if isinstance(r, Block):
            return f"({'' if p is None else p} -> {to_formatted_string(r, indent)})"
    return to_string(node)


def walk(node: BuildingBlock):
    """Yields ``node`` and all nodes below it, parents first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children()))


def references_out_of_scope(node: BuildingBlock, scope: Optional[dict] = None):
    """The references in ``node`` that no binder explains, as ``(reference, bound type or None)``.

    ``scope`` maps the names bound around ``node`` to their types.  A reference
    is out of scope when no enclosing Lambda or Block (nor ``scope``) binds its
    name (``None``), or when the binder gives the name another type than the
    reference carries (the binder's type): a selection typed against one value
    but reading another.  Walks without recursion, so deep IR is fine.
    """
    found = []
    # Work items: (node, scope) to visit, or ("bind", scope, name, type) continuations for blocks.
    stack = [(node, dict(scope or {}))]
    while stack:
        current, env = stack.pop()
        match current:
            case Reference(name=name, type_signature=t):
                if name not in env:
                    found.append((current, None))
                elif env[name] != t:
                    found.append((current, env[name]))
            case Lambda(parameter_name=p, parameter_type=t, result=r):
                inner = env if p is None else {**env, p: t}
                stack.append((r, inner))
            case Block(locals=locs, result=r):
                inner = dict(env)
                for name, value in locs:
                    stack.append((value, dict(inner)))
                    inner[name] = value.type_signature
                stack.append((r, inner))
            case _:
                stack.extend((child, env) for child in current.children())
    return found


def is_federated_result(node: BuildingBlock) -> bool:
    return isinstance(node.type_signature, FederatedType)

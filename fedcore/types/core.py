"""The federated type classes: small immutable values with structural equality.

Every class is an attrs frozen class, so types hash, compare by structure and
can be used as dictionary keys.  ``str(t)`` prints the compact notation
(``{<x=float32[?,784],y=int32[?]>*}@CLIENTS``) that :func:`fedcore.types.parse`
reads back.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import attrs
import numpy as np

# The dtypes the notation knows, by their canonical name.
DTYPE_NAMES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "string",
)

_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./\-]*$")
_LABEL_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


def canonical_dtype(dtype: Any) -> str:
    """Returns the canonical dtype name for a numpy, TF or string dtype."""
    if dtype is None:
        # np.dtype(None) would silently mean float64.
        raise TypeError(
            f"unknown dtype None; expected a numpy or TensorFlow dtype or one of {', '.join(DTYPE_NAMES)}"
        )
    if any(dtype is python_type for python_type in (bool, int, float, str)):
        # Python's own types map the way TensorFlow maps Python values.
        name = {bool: "bool", int: "int32", float: "float32", str: "string"}[dtype]
    elif isinstance(dtype, str):
        name = dtype
    elif hasattr(type(dtype), "as_numpy_dtype") and hasattr(type(dtype), "name"):
        # A tf.DType, recognized without importing TensorFlow.  Looked up on the class:
        # as_numpy_dtype raises KeyError for dtypes such as tf.resource.
        name = dtype.name
    else:
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(
                f"unknown dtype {dtype!r}; expected a numpy or TensorFlow dtype or one of "
                f"{', '.join(DTYPE_NAMES)}"
            ) from None
        if np_dtype.kind in ("U", "S", "O"):
            name = "string"
        else:
            name = np_dtype.name
    if name == "bool_":
        name = "bool"
    if name not in DTYPE_NAMES:
        raise TypeError(f"unknown dtype {dtype!r}; allowed dtypes are {', '.join(DTYPE_NAMES)}")
    return name


_MAX_DIM = 2**63 - 1  # TensorFlow's dimensions are int64


def _convert_shape(shape: Any) -> Optional[Tuple[Optional[int], ...]]:
    if shape is None:
        return None
    if hasattr(shape, "as_list") and hasattr(shape, "rank"):
        # tf.TensorShape
        if shape.rank is None:
            return None
        shape = shape.as_list()
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(
            f"shape must be a sequence of dimensions (int or None) or None for unknown rank, "
            f"got {shape!r}"
        ) from None
    result = []
    for dim in dims:
        if dim is None:
            result.append(None)
        elif isinstance(dim, (int, np.integer)) and not isinstance(dim, bool):
            if dim < 0:
                raise ValueError(f"dimension must be non-negative or None, got {dim} in shape {shape!r}")
            if dim > _MAX_DIM:
                raise ValueError(f"dimension {dim} in shape {shape!r} is too large; a dimension must fit in int64")
            result.append(int(dim))
        else:
            raise TypeError(f"dimension must be an int or None, got {dim!r} in shape {shape!r}")
    return tuple(result)


#: The deepest a type may nest (a tensor is 1 level, ``<int32>``, ``int32*`` and ``int32@SERVER``
#: are 2): the notation, the type constructors and every executor accept types up to this depth,
#: and refuse deeper ones.  A function type may be one level deeper, so that its parameter and
#: its result may each be ``MAX_DEPTH`` deep; the constructors refuse only types more than
#: ``INTERNAL_LEVELS`` deeper, which the IR of intrinsic calls around values at the limit needs.
MAX_DEPTH = 100


class TypeNestingError(TypeError, ValueError):
    """A type that nests more than ``MAX_DEPTH`` levels deep."""


# The depth of each struct, sequence, federated and function type built, by id (with a weak
# reference to tell a reused id), so that building a type costs one look-up per child.
_DEPTHS: Dict[int, Tuple[Any, int]] = {}


def nesting_depth(t: "Type") -> int:
    """How deeply ``t`` nests: a tensor is 1, ``<int32>`` and ``int32*`` are 2."""
    entry = _DEPTHS.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1]
    parts = _parts(t)
    return 1 + max((nesting_depth(p) for p in parts), default=0)


def depth_limit(t: "Type") -> int:
    """``MAX_DEPTH``, and one more for a function type: its parameter and its result may each
    nest ``MAX_DEPTH`` levels deep."""
    return MAX_DEPTH + 1 if isinstance(t, FunctionType) else MAX_DEPTH


#: The levels the constructors allow beyond ``MAX_DEPTH``: the argument structs and function
#: types of intrinsic calls wrap values at the limit in a few more levels.
INTERNAL_LEVELS = 8


def _parts(t: "Type") -> Tuple["Type", ...]:
    if isinstance(t, StructType):
        return tuple(e for _, e in t.elements)
    if isinstance(t, SequenceType):
        return (t.element,)
    if isinstance(t, FederatedType):
        return (t.member,)
    if isinstance(t, FunctionType):
        return tuple(p for p in (t.parameter, t.result) if p is not None)
    return ()


def _check_depth(t: "Type") -> None:
    depth = 1 + max((nesting_depth(p) for p in _parts(t)), default=0)
    if depth > MAX_DEPTH + INTERNAL_LEVELS:
        raise TypeNestingError(
            f"a type may nest at most MAX_DEPTH={MAX_DEPTH} levels deep (fedcore.types.MAX_DEPTH); "
            f"this {type(t).__name__} nests more than {MAX_DEPTH} levels ({depth})"
        )
    if len(_DEPTHS) > 100_000:
        _DEPTHS.clear()
    _DEPTHS[id(t)] = (weakref.ref(t), depth)


class Type:
    """Base of all fedcore types."""

    __slots__ = ()

    def compact(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.compact()

    def formatted(self) -> str:
        """Multi-line form: two-space indent per struct level, one element per line."""
        from fedcore.types.printing import format_type

        return format_type(self)

    def is_assignable_from(self, source: "Type") -> bool:
        from fedcore.types.relations import is_assignable_from

        return is_assignable_from(self, source)

    def is_equivalent_to(self, other: "Type") -> bool:
        from fedcore.types.relations import is_equivalent_to

        return is_equivalent_to(self, other)

    def check_assignable_from(self, source: "Type") -> None:
        if not self.is_assignable_from(source):
            raise TypeError(f"expected a value of type {self}, got {source}")

    # TFF's names for the methods above.

    def compact_representation(self) -> str:
        """TFF's name for :meth:`compact`."""
        return self.compact()

    def formatted_representation(self) -> str:
        """TFF's name for :meth:`formatted`."""
        return self.formatted()

    def check_equivalent_to(self, other: "Type") -> None:
        """Raises TypeError unless ``self`` and ``other`` are equivalent (each assignable from the other)."""
        if not isinstance(other, Type):
            raise TypeError(f"expected a fedcore type to compare with {self}, got {other!r}")
        if not self.is_equivalent_to(other):
            raise TypeError(f"type {self} is not equivalent to type {other}")


@attrs.frozen(repr=False, cache_hash=True)
class TensorType(Type):
    """A tensor: ``float32[?,784]``; a scalar prints as its dtype; ``[*]`` is unknown rank."""

    dtype: str = attrs.field(converter=canonical_dtype)
    shape: Optional[Tuple[Optional[int], ...]] = attrs.field(default=(), converter=_convert_shape)

    def compact(self) -> str:
        if self.shape is None:
            return f"{self.dtype}[*]"
        if not self.shape:
            return self.dtype
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def __repr__(self) -> str:
        return f"TensorType({self.dtype!r}, {self.shape!r})"

    @property
    def np_dtype(self) -> np.dtype:
        if self.dtype == "string":
            return np.dtype(object)
        if self.dtype == "bfloat16":
            import tensorflow as tf

            return tf.bfloat16.as_numpy_dtype
        return np.dtype(self.dtype)

    @property
    def tf_dtype(self):
        import tensorflow as tf

        return tf.dtypes.as_dtype(self.dtype)

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)

    def is_fully_defined(self) -> bool:
        return self.shape is not None and all(d is not None for d in self.shape)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _convert_elements(elements: Any) -> Tuple[Tuple[Optional[str], Type], ...]:
    explicit_pairs = isinstance(elements, dict)
    if explicit_pairs:
        elements = list(elements.items())
    try:
        items = list(elements)
    except TypeError:
        raise TypeError(f"struct elements must be a sequence of (name, type) pairs, got {elements!r}") from None
    from fedcore.types.convert import is_tensor_pair, to_type

    result = []
    seen = set()
    for item in items:
        if isinstance(item, Type):
            name, value = None, item
        elif explicit_pairs or (
            isinstance(item, tuple) and not _is_namedtuple(item) and len(item) == 2 and not is_tensor_pair(item)
        ):
            name, value = item
        else:
            # A bare type spec, as TFF accepts: a dtype, a (dtype, shape) pair, a container of specs.
            try:
                name, value = None, to_type(item)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"struct element must be a type, a type spec or a (name, type) pair, got {item!r} ({e})"
                ) from None
        if name is not None:
            if not isinstance(name, str) or not _NAME_PATTERN.match(name):
                raise ValueError(
                    f"struct element name must be an identifier (letters, digits, '_', '/', '.', '-'), "
                    f"got {name!r}"
                )
            if name in seen:
                raise ValueError(f"duplicate struct element name {name!r}")
            seen.add(name)
        if not isinstance(value, Type):
            value = to_type(value)
        result.append((name, value))
    return tuple(result)


@attrs.frozen(repr=False, cache_hash=True)
class StructType(Type):
    """An ordered struct of named or unnamed elements: ``<a=int32,bool>``.

    ``container`` remembers the Python container (list, tuple, dict, namedtuple,
    attrs class) the struct came from.  It takes part in neither ``str`` nor
    equality: two structs with the same elements are the same type.
    """

    elements: Tuple[Tuple[Optional[str], Type], ...] = attrs.field(converter=_convert_elements)
    container: Optional[type] = attrs.field(default=None, eq=False, kw_only=True)

    def __attrs_post_init__(self):
        _check_depth(self)

    def compact(self) -> str:
        parts = [t.compact() if n is None else f"{n}={t.compact()}" for n, t in self.elements]
        return "<" + ",".join(parts) + ">"

    def __repr__(self) -> str:
        return f"StructType({list(self.elements)!r})"

    def __len__(self) -> int:
        return len(self.elements)

    def __iter__(self) -> Iterator[Type]:
        return (t for _, t in self.elements)

    def names(self) -> Tuple[Optional[str], ...]:
        return tuple(n for n, _ in self.elements)

    def index_of(self, name: str) -> int:
        for i, (n, _) in enumerate(self.elements):
            if n == name:
                return i
        raise AttributeError(name)

    def has_name(self, name: str) -> bool:
        return any(n == name for n, _ in self.elements)

    def __getitem__(self, key: Union[int, str]) -> Type:
        if isinstance(key, str):
            return self.elements[self.index_of(key)][1]
        return self.elements[key][1]

    def __getattr__(self, name: str) -> Type:
        # ``t.a`` is the type of element ``a``, as in TFF.  Only called when ``name`` is not an
        # attribute or method of StructType: ``t['names']`` reaches an element so named.
        if name.startswith("_"):
            raise AttributeError(name)
        for n, t in object.__getattribute__(self, "elements"):
            if n == name:
                return t
        raise AttributeError(f"struct type {self} has no element named {name!r}")

    @property
    def python_container(self) -> Optional[type]:
        """TFF's name for ``container``: the Python container the struct came from, or None."""
        return self.container


def _check_sequence_element(_, __, value: Type) -> None:
    if not isinstance(value, Type):
        raise TypeError(f"sequence element must be a type, got {value!r}")
    bad = find_forbidden(value, (FederatedType, FunctionType, PlacementType))
    if bad is not None:
        raise TypeError(f"a sequence cannot hold {bad} (in sequence element {value})")


def _to_type_if_needed(value: Any) -> Type:
    if isinstance(value, Type):
        return value
    from fedcore.types.convert import to_type

    return to_type(value)


@attrs.frozen(repr=False, cache_hash=True)
class SequenceType(Type):
    """A sequence (dataset) of elements: ``int32*``."""

    element: Type = attrs.field(converter=_to_type_if_needed, validator=_check_sequence_element)

    def __attrs_post_init__(self):
        _check_depth(self)

    def compact(self) -> str:
        inner = self.element.compact()
        if isinstance(self.element, FunctionType):
            inner = f"({inner})"
        return f"{inner}*"

    def __repr__(self) -> str:
        return f"SequenceType({self.element!r})"


def _to_optional_type(value: Any) -> Optional[Type]:
    return None if value is None else _to_type_if_needed(value)


@attrs.frozen(repr=False, cache_hash=True)
class FunctionType(Type):
    """A function: ``(int32 -> float32)``; no parameter prints ``( -> T)``."""

    parameter: Optional[Type] = attrs.field(converter=_to_optional_type)
    result: Type = attrs.field(converter=_to_type_if_needed)

    def __attrs_post_init__(self):
        _check_depth(self)

    def compact(self) -> str:
        param = "" if self.parameter is None else self.parameter.compact()
        return f"({param} -> {self.result.compact()})"

    def __repr__(self) -> str:
        return f"FunctionType({self.parameter!r}, {self.result!r})"


@attrs.frozen(repr=False, cache_hash=True)
class Placement:
    """A placement literal: ``SERVER`` or ``CLIENTS``."""

    name: str

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"fedcore.{self.name}"


SERVER = Placement("SERVER")
CLIENTS = Placement("CLIENTS")
PLACEMENTS = {"SERVER": SERVER, "CLIENTS": CLIENTS}


def to_placement(value: Any) -> Placement:
    """Accepts SERVER, CLIENTS or their names in any case."""
    if isinstance(value, Placement):
        # Canonicalize: FederatedType compares placements by identity (``is SERVER``), and a
        # hand-made Placement("EDGE") must be refused like the string "EDGE".
        value = value.name
    if isinstance(value, str) and value.upper() in PLACEMENTS:
        return PLACEMENTS[value.upper()]
    raise ValueError(f"unknown placement {value!r}; allowed placements are SERVER and CLIENTS")


def find_forbidden(t: Type, kinds: tuple) -> Optional[Type]:
    """Returns the first nested type (including ``t``) that is an instance of ``kinds``."""
    if isinstance(t, kinds):
        return t
    match t:
        case StructType():
            for element in t:
                found = find_forbidden(element, kinds)
                if found is not None:
                    return found
        case SequenceType(element=e):
            return find_forbidden(e, kinds)
    return None


def _check_member(_, __, value: Type) -> None:
    bad = find_forbidden(value, (FederatedType, FunctionType, PlacementType))
    if bad is not None:
        kind = type(bad).__name__.replace("Type", "").lower()
        raise TypeError(f"a federated member cannot hold a {kind} type, got {bad} in member {value}")


@attrs.frozen(repr=False, cache_hash=True)
class FederatedType(Type):
    """A federated value: ``int32@SERVER`` (all-equal) or ``{float32}@CLIENTS``.

    ``all_equal`` defaults to True at SERVER and False at CLIENTS.
    """

    member: Type = attrs.field(converter=_to_type_if_needed, validator=_check_member)
    placement: Placement = attrs.field(converter=to_placement)
    all_equal: bool = attrs.field(default=None)

    def __attrs_post_init__(self):
        if self.all_equal is None:
            object.__setattr__(self, "all_equal", self.placement is SERVER)
        elif not isinstance(self.all_equal, bool):
            raise TypeError(f"all_equal must be a bool, got {self.all_equal!r}")
        _check_depth(self)

    def compact(self) -> str:
        member = self.member.compact()
        if self.all_equal:
            return f"{member}@{self.placement.name}"
        return f"{{{member}}}@{self.placement.name}"

    def __repr__(self) -> str:
        return f"FederatedType({self.member!r}, {self.placement.name}, all_equal={self.all_equal})"


@attrs.frozen(repr=False, cache_hash=True)
class PlacementType(Type):
    """The type of placement literals: ``placement``."""

    def compact(self) -> str:
        return "placement"

    def __repr__(self) -> str:
        return "PlacementType()"


def _check_label(_, __, value: str) -> None:
    if not isinstance(value, str) or not _LABEL_PATTERN.match(value):
        raise ValueError(
            f"abstract type label must start with an upper-case letter followed by letters, "
            f"digits or '_', got {value!r}"
        )


@attrs.frozen(repr=False, cache_hash=True)
class AbstractType(Type):
    """A type variable in generic signatures: ``T``."""

    label: str = attrs.field(validator=_check_label)

    def compact(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"AbstractType({self.label!r})"


def type_at_server(member: Any) -> FederatedType:
    """``T@SERVER``."""
    return FederatedType(member, SERVER)


def type_at_clients(member: Any, all_equal: bool = False) -> FederatedType:
    """``{T}@CLIENTS``, or ``T@CLIENTS`` when ``all_equal``."""
    return FederatedType(member, CLIENTS, all_equal)


# TFF's names: ``tff.types.at_server(T)`` and ``tff.types.at_clients(T, all_equal=False)``.
at_server = type_at_server
at_clients = type_at_clients


def StructWithPythonType(elements: Any, container: type) -> StructType:  # noqa: N802 (TFF's name)
    """TFF's ``StructWithPythonType(elements, container)``: a StructType that remembers ``container``.

    fedcore keeps the container on every StructType (``t.container``, or
    ``t.python_container``), so this returns a plain StructType: it is equal
    to the StructType of the same elements, and it is not a class of its own.
    """
    if not isinstance(container, type):
        raise TypeError(f"container must be a Python class (list, tuple, dict, a namedtuple or attrs class), got {container!r}")
    return StructType(elements, container=container)

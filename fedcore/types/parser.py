"""``parse(text)``: reads the type notation back into type values."""

from __future__ import annotations

import functools
import pathlib

import lark

from fedcore.types.core import (
    AbstractType,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    to_placement,
)

_GRAMMAR = pathlib.Path(__file__).with_name("notation.lark")

# Friendly names for terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "ELEMENT_NAME": "an element name",
    "DTYPE_NAME": "a dtype",
    "ABSTRACT": "an abstract type",
    "PLACEMENT_NAME": "a placement",
    "INT": "a dimension",
    "PLACEMENT": "'placement'",
    "LESSTHAN": "'<'",
    "MORETHAN": "'>'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "EQUAL": "'='",
    "STAR": "'*'",
    "AT": "'@'",
    "QMARK": "'?'",
    "__ANON_0": "'->'",
    "$END": "end of input",
}


class _Builder(lark.Transformer):
    def start(self, items):
        return items[0]

    def all_equal_federated(self, items):
        member, placement = items
        return FederatedType(member, to_placement(str(placement)), all_equal=True)

    def federated(self, items):
        member, placement = items
        return FederatedType(member, to_placement(str(placement)), all_equal=False)

    def sequence_type(self, items):
        return SequenceType(items[0])

    def abstract(self, items):
        return AbstractType(str(items[0]))

    def placement_type(self, items):
        return PlacementType()

    def tensor(self, items):
        dtype = str(items[0])
        shape = items[1] if len(items) > 1 else ()
        return TensorType(dtype, shape)

    def known_shape(self, items):
        return tuple(items)

    def unknown_rank(self, items):
        return None

    def known_dim(self, items):
        return int(items[0])

    def unknown_dim(self, items):
        return None

    def struct(self, items):
        if items == [None]:
            return StructType([])
        return StructType(list(items))

    def named_element(self, items):
        return (str(items[0]), items[1])

    def unnamed_element(self, items):
        return (None, items[0])

    def function(self, items):
        parameter, result = items
        return FunctionType(parameter, result)


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    return lark.Lark(
        _GRAMMAR.read_text(),
        parser="lalr",
        maybe_placeholders=True,
        transformer=_Builder(),
    )


# The deepest nesting the notation accepts.  Printing, comparing and hashing types recurse
# once or twice per level, so much deeper types would hit Python's recursion limit later.
from fedcore.types.core import MAX_DEPTH, TypeNestingError, depth_limit  # noqa: E402  (the constructors' limit)


def _depth(t: Type) -> int:
    """How deeply ``t`` nests (a tensor is 1, ``<int32>`` is 2), computed without recursion."""
    deepest, stack = 0, [(t, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, StructType):
            stack.extend((element, level + 1) for element in node)
        elif isinstance(node, SequenceType):
            stack.append((node.element, level + 1))
        elif isinstance(node, FederatedType):
            stack.append((node.member, level + 1))
        elif isinstance(node, FunctionType):
            stack.extend((part, level + 1) for part in (node.parameter, node.result) if part is not None)
    return deepest


def _too_deep(text: str) -> ValueError:
    shown = repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"
    return TypeNestingError(f"cannot parse type {shown}: it nests more than {MAX_DEPTH} levels deep (MAX_DEPTH)")


def _describe_expected(expected) -> str:
    names = sorted({_TERMINAL_NAMES.get(t, t) for t in expected})
    return ", ".join(names)


def _where(text: str, line: int, column: int) -> str:
    # Multi-line text (such as Type.formatted()) needs the line to make the column useful.
    return f"line {line}, column {column}" if "\n" in text else f"column {column}"


def _end_of(text: str) -> str:
    return _where(text, text.count("\n") + 1, len(text) - text.rfind("\n"))


def parse(text: str) -> Type:
    """Parses the type notation, e.g. ``parse('{float32}@CLIENTS')``.

    Raises ValueError naming the column and what was expected on bad syntax,
    and TypeError or ValueError for well-formed text that names a bad type
    (an unknown dtype, a federated member that is itself federated, ...) or
    that nests more than ``MAX_DEPTH`` levels deep.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() expects a string in the type notation, got {text!r}")
    return _parse(text)


# Cached behind the str check, so that unhashable input gets the message above.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Type:
    try:
        result = _parser().parse(text)
    except (RecursionError, TypeNestingError):  # the constructors refuse a type deeper than MAX_DEPTH
        raise _too_deep(text) from None
    except lark.exceptions.UnexpectedCharacters as e:
        raise ValueError(
            f"cannot parse type {text!r}: unexpected character {text[e.pos_in_stream]!r} at "
            f"{_where(text, e.line, e.column)}; expected {_describe_expected(e.allowed)}\n"
            f"{e.get_context(text)}"
        ) from None
    except lark.exceptions.UnexpectedToken as e:
        got = "end of input" if e.token.type == "$END" else repr(str(e.token))
        where = _end_of(text) if e.token.type == "$END" else _where(text, e.line, e.column)
        # ``accepts`` (what the parser could really take here) is exact; ``expected`` (the
        # tokens of the LALR state) may miss some after default reductions.
        expected = getattr(e, "accepts", None) or e.expected
        raise ValueError(
            f"cannot parse type {text!r}: unexpected {got} at {where}; "
            f"expected {_describe_expected(expected)}"
        ) from None
    except lark.exceptions.UnexpectedEOF as e:
        raise ValueError(
            f"cannot parse type {text!r}: unexpected end of input at {_end_of(text)}; "
            f"expected {_describe_expected(e.expected)}"
        ) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, (RecursionError, TypeNestingError)):
            raise _too_deep(text) from None
        raise e.orig_exc from None
    if _depth(result) > depth_limit(result):
        raise _too_deep(text)
    return result

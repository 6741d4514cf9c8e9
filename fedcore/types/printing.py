"""The multi-line view of the notation: one struct element per line."""

from __future__ import annotations

from fedcore.types.core import (
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    Type,
)

_INDENT = "  "


def format_type(t: Type, width: int = 0) -> str:
    """Formats ``t`` over several lines; structs put one element per line.

    The result parses back to ``t``: whitespace is insignificant in the notation.
    """
    return _format(t, 0)


def _format(t: Type, depth: int) -> str:
    pad = _INDENT * (depth + 1)
    match t:
        case StructType(elements=elements) if elements:
            lines = []
            for i, (name, element) in enumerate(elements):
                text = _format(element, depth + 1)
                prefix = "" if name is None else f"{name}="
                comma = "," if i < len(elements) - 1 else ""
                lines.append(f"{pad}{prefix}{text}{comma}")
            return "<\n" + "\n".join(lines) + "\n" + _INDENT * depth + ">"
        case SequenceType(element=element):
            inner = _format(element, depth)
            if isinstance(element, FunctionType):
                inner = f"({inner})"
            return inner + "*"
        case FederatedType(member=member, placement=placement, all_equal=all_equal):
            inner = _format(member, depth)
            return f"{inner}@{placement}" if all_equal else f"{{{inner}}}@{placement}"
        case FunctionType(parameter=parameter, result=result):
            param = "" if parameter is None else _format(parameter, depth)
            return f"({param} -> {_format(result, depth)})"
        case _:
            return t.compact()

"""``parse_ir(text)``: reads the compact IR form back into building blocks.

Lambda parameters and Data nodes need their types, which the annotated form
gives: ``to_string(node, annotated=True)`` prints ``(x:{float32}@CLIENTS -> ...)``.
TensorFlow computations print as ``comp#id``; pass them in ``computations``.
"""

from __future__ import annotations

import ast
import functools
import pathlib
from typing import Any, Dict, Mapping, Optional

import lark
import numpy as np

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.intrinsics import INTRINSICS, lookup
from fedcore.types import StructType, Type, parse
from fedcore.types.core import PLACEMENTS

_HERE = pathlib.Path(__file__).parent


@functools.lru_cache(maxsize=None)
def _parser() -> lark.Lark:
    return lark.Lark(
        (_HERE / "ir.lark").read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        import_paths=[str(_HERE.parent / "types")],
    )


class IRSyntaxError(ValueError):
    """The text is not valid IR."""


def parse_ir(
    text: str,
    computations: Optional[Mapping[str, Any]] = None,
    types: Optional[Mapping[str, Any]] = None,
) -> bb.BuildingBlock:
    """Parses compact IR text into a building block.

    ``computations`` maps the ids in ``comp#id`` to TensorFlowComputation nodes
    (or Computations wrapping them); ``types`` gives the types of free names.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_ir() expects a string, got {text!r}")
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        expected = sorted(getattr(e, "expected", None) or getattr(e, "allowed", None) or [])
        token = getattr(e, "token", None)
        at_end = isinstance(e, lark.exceptions.UnexpectedEOF) or getattr(token, "type", None) == "$END"
        column = len(text) + 1 if at_end else e.column
        raise IRSyntaxError(
            f"cannot parse IR {text!r} at column {column}: expected one of {', '.join(expected)}\n"
            f"{e.get_context(text)}"
        ) from None
    env = {name: parse(t) if isinstance(t, str) else t for name, t in (types or {}).items()}
    return _Builder(text, dict(computations or {})).build(tree.children[0], env)


class _Builder:
    def __init__(self, text: str, computations: Dict[str, Any]):
        self.text = text
        self.computations = computations

    def type_of(self, annotation: lark.Tree) -> Type:
        start, end = annotation.meta.start_pos, annotation.meta.end_pos
        return parse(self.text[start:end].lstrip()[1:])

    def build(self, tree, env: Dict[str, Type]) -> bb.BuildingBlock:
        kind = tree.data
        c = tree.children
        if kind == "lambda_":
            name, annotation, body = c
            if name is None:
                return bb.Lambda(None, None, self.build(body, env))
            if annotation is None:
                raise IRSyntaxError(f"lambda parameter {name} needs a type annotation, as in ({name}:int32 -> ...)")
            t = self.type_of(annotation)
            return bb.Lambda(str(name), t, self.build(body, {**env, str(name): t}))
        if kind == "block":
            *bindings, result = c
            scope = dict(env)
            built = []
            for binding in bindings:
                name, value = binding.children
                node = self.build(value, scope)
                scope[str(name)] = node.type_signature
                built.append((str(name), node))
            return bb.Block(built, self.build(result, scope))
        if kind == "call":
            fn_tree, arg_tree = c
            arg = None if arg_tree is None else self.build(arg_tree, env)
            if fn_tree.data == "name" and str(fn_tree.children[0]) not in env and str(fn_tree.children[0]) in INTRINSICS:
                uri = str(fn_tree.children[0])
                fn_type = lookup(uri).instantiate(None if arg is None else arg.type_signature)
                return bb.Call(bb.Intrinsic(uri, fn_type), arg)
            return bb.Call(self.build(fn_tree, env), arg)
        if kind == "select_name":
            source = self.build(c[0], env)
            t = source.type_signature
            name = str(c[1])
            if not isinstance(t, StructType) or not t.has_name(name):
                raise TypeError(f"cannot select {name!r} from a value of type {t}")
            return bb.Selection(source, t.index_of(name), name)
        if kind == "select_index":
            return bb.Selection(self.build(c[0], env), int(c[1]))
        if kind == "name":
            name = str(c[0])
            if name in env:
                return bb.Reference(name, env[name])
            if name in PLACEMENTS:
                return bb.Placement(PLACEMENTS[name])
            if name in INTRINSICS:
                raise IRSyntaxError(f"intrinsic {name} must be called with its argument to have a type")
            raise IRSyntaxError(f"unbound name {name!r}; pass its type in types={{{name!r}: ...}}")
        if kind == "struct":
            elements = [e for e in c if e is not None]
            items = []
            for e in elements:
                if e.data == "named_element":
                    items.append((str(e.children[0]), self.build(e.children[1], env)))
                else:
                    items.append((None, self.build(e.children[0], env)))
            return bb.Struct(items)
        if kind == "comp":
            cid = str(c[0])[len("comp#"):]
            if cid not in self.computations:
                raise IRSyntaxError(f"comp#{cid} is not among the computations given to parse_ir")
            comp = self.computations[cid]
            return comp._fedcore_ir() if hasattr(comp, "_fedcore_ir") else comp
        if kind == "data":
            return bb.Data(str(c[0])[len("data#"):], self.type_of(c[1]))
        if kind == "number":
            token, annotation = c
            text = str(token)
            if annotation is not None:
                t = self.type_of(annotation)
                return bb.Literal(np.asarray(float(text) if t.np_dtype.kind in "fc" else int(text), t.np_dtype), t)
            return bb.literal(float(text) if any(ch in text for ch in ".eEn") else int(text))
        if kind == "string":
            return bb.literal(ast.literal_eval(str(c[0])))
        if kind == "array":
            t = self.type_of(c[1])
            return bb.Literal(np.asarray(ast.literal_eval(str(c[0]).replace("nan", "None")), t.np_dtype), t)
        if kind in ("true", "false"):
            return bb.literal(kind == "true")
        raise IRSyntaxError(f"unexpected IR construct {kind}")

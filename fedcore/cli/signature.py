"""``fedcore signature MODULE:ATTR``, and the lookup of ``MODULE:ATTR`` targets that ``compile`` shares."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any


def resolve_target(target: str) -> Any:
    """``MODULE:ATTR`` -> the object; ATTR may be dotted.  Raises ValueError with what went wrong."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, such as mypackage.algorithms:next_round, got {target!r}")
    if module_name.startswith("."):
        raise ValueError(f"cannot import module {module_name!r}: give an absolute module name, not a relative one")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules in the current directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r}: {e}") from None
    where = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{where} has no attribute {part!r}") from None
        where = f"{where}.{part}"
    return obj


def round_of(obj: Any) -> Any:
    """What ``compile`` compiles for ``obj``: an IterativeProcess's ``next``, or ``obj`` itself."""
    from fedcore.compiler.computation import Computation

    if not isinstance(obj, Computation) and isinstance(getattr(obj, "next", None), Computation):
        return obj.next
    return obj


def _signature_of(obj: Any, target: str, parser: argparse.ArgumentParser) -> Any:
    from fedcore.types import Type

    try:
        signature = obj if isinstance(obj, Type) else getattr(obj, "type_signature", None)
    except TypeError as e:  # a polymorphic computation has no signature until its parameter types are known
        parser.error(f"argument MODULE:ATTR: {target} has no type signature: {e}")
    return signature if isinstance(signature, Type) else None


def signature_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Prints the type signature of a computation or a type, or those of an IterativeProcess's computations."""
    from fedcore.compiler.computation import Computation

    try:
        obj = resolve_target(args.target)
    except ValueError as e:
        parser.error(f"argument MODULE:ATTR: {e}")
    signature = _signature_of(obj, args.target, parser)
    if signature is not None:
        print(f"{args.target}")
        _print_signature(signature, "")
        return 0
    if round_of(obj) is not obj:  # an IterativeProcess (or another object with a ``next`` computation)
        print(f"{args.target}: a {type(obj).__name__}")
        for name in ("initialize", "next", "get_model_weights", "set_model_weights"):
            member = getattr(obj, name, None)
            if isinstance(member, Computation):
                member_signature = _signature_of(member, f"{args.target}.{name}", parser)
                if member_signature is not None:
                    print(f"{name}:")
                    _print_signature(member_signature, "  ")
        return 0
    parser.error(
        f"argument MODULE:ATTR: {args.target} is a {type(obj).__name__}, not a computation or an IterativeProcess; "
        "it has no type signature (decorate it with @fedcore.federated_computation or @fedcore.tf_computation)"
    )


def _print_signature(signature: Any, indent: str) -> None:
    print(f"{indent}compact:   {signature.compact()}")
    print(f"{indent}formatted:")
    for line in signature.formatted().splitlines():
        print(f"{indent}  {line}")

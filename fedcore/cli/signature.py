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


def signature_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedcore.types import Type

    try:
        obj = resolve_target(args.target)
    except ValueError as e:
        parser.error(f"argument MODULE:ATTR: {e}")
    try:
        signature = obj if isinstance(obj, Type) else getattr(obj, "type_signature", None)
    except TypeError as e:  # a polymorphic computation has no signature until its parameter types are known
        parser.error(f"argument MODULE:ATTR: {args.target} has no type signature: {e}")
    if not isinstance(signature, Type):
        parser.error(
            f"argument MODULE:ATTR: {args.target} is a {type(obj).__name__}, not a computation; it has no "
            "type signature (decorate it with @fedcore.federated_computation or @fedcore.tf_computation)"
        )
    print(f"{args.target}")
    print(f"compact:   {signature.compact()}")
    print("formatted:")
    for line in signature.formatted().splitlines():
        print(f"  {line}")
    return 0

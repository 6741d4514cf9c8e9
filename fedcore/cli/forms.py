"""``fedcore compile`` and ``fedcore inspect``: deployment forms on the command line.

``fedcore compile MODULE:ATTR --form mapreduce -o round.fedcore`` compiles a
round (a computation, or an IterativeProcess's ``next``) to a form and writes
it in the data-only format of ``fedcore.serialize``.  ``fedcore inspect FILE``
prints what such a file holds: type signatures and IR, piece by piece.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict

from fedcore.cli.signature import resolve_target, round_of

FORMS = ("mapreduce", "distribute-aggregate")


def add_commands(commands: Any) -> None:
    """Adds the two subcommands to the ``fedcore`` parser's subparsers."""
    compile_ = commands.add_parser(
        "compile",
        help="compile a round to a deployment form and write it to a file",
        description="Imports MODULE, looks up ATTR (a computation shaped (<S@SERVER,{D}@CLIENTS> -> "
        "<S@SERVER,M@SERVER>), or an IterativeProcess, whose next is used), compiles it to a deployment form and "
        "writes it in fedcore's data-only format.",
    )
    compile_.add_argument("target", metavar="MODULE:ATTR", help="e.g. mypackage.algorithms:fedavg_process")
    compile_.add_argument("--form", choices=FORMS, required=True, help="which deployment form")
    compile_.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="where to write it")
    inspect_ = commands.add_parser(
        "inspect",
        help="print the type signatures and IR held in a compiled file",
        description="Reads a file written by `fedcore compile` or fedcore.serialize and prints what it holds.",
    )
    inspect_.add_argument("file", type=Path, metavar="FILE")


def compile_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedcore.compiler import forms
    from fedcore.compiler.computation import Computation
    from fedcore.compiler.serialization import SerializationError, serialize

    try:
        obj = resolve_target(args.target)
    except ValueError as e:
        parser.error(f"argument MODULE:ATTR: {e}")
    comp = round_of(obj)
    if not isinstance(comp, Computation):
        parser.error(
            f"argument MODULE:ATTR: {args.target} is a {type(obj).__name__}, not a computation or an "
            "IterativeProcess"
        )
    compile_form = forms.to_map_reduce_form if args.form == "mapreduce" else forms.to_distribute_aggregate_form
    try:
        form = compile_form(comp)
        data = serialize(form)
    except (forms.FormError, SerializationError) as e:
        parser.error(f"cannot compile {args.target}: {e}")
    if args.output.is_dir():
        parser.error(f"argument -o/--output: {args.output} is a directory; give a file name")
    if not args.output.parent.exists():
        parser.error(f"argument -o/--output: the directory {args.output.parent} does not exist")
    from fedcore._files import write_atomically

    write_atomically(args.output, data, args.output.parent / f".{args.output.name}.{os.getpid()}.tmp")
    print(form.summary())
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


def inspect_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Prints what FILE holds; for a file that cannot be read or loaded, exits with status 2 and one line on stderr."""
    from fedcore.compiler.serialization import SerializationError, deserialize

    try:
        data = args.file.read_bytes()
    except OSError as e:
        _refuse(parser, f"cannot read {args.file}: {e.strerror or e}")
    try:
        loaded = deserialize(data)
    except SerializationError as e:
        _refuse(parser, f"{args.file} is not a fedcore file: {e}")
    print(describe(loaded))
    return 0


def _refuse(parser: argparse.ArgumentParser, message: str) -> None:
    # One line, whatever the message holds (TensorFlow's errors span several).
    parser.exit(2, f"{parser.prog} inspect: error: argument FILE: {' '.join(message.split())}\n")


def describe(loaded: Any) -> str:
    """Type signatures and formatted IR of a computation or of each piece of a form."""
    from fedcore.compiler import building_blocks as bb
    from fedcore.compiler.computation import Computation

    if isinstance(loaded, Computation):
        pieces: Dict[str, Computation] = {loaded.name or "computation": loaded}
        lines = [f"computation {loaded.name}: {loaded.type_signature}"]
    else:
        pieces = loaded.pieces()
        lines = [f"{type(loaded).__name__} of {loaded.type_signature}"]
    functions: Dict[str, Any] = {}
    for name, comp in pieces.items():
        lines += ["", f"{name}: {comp.type_signature}", _indent(bb.to_formatted_string(comp.ir))]
        for node in bb.walk(comp.ir):
            if isinstance(node, bb.TensorFlowComputation):
                functions.setdefault(node.id, node)
    if functions:
        lines += ["", "TensorFlow computations:"]
        for cid, node in functions.items():
            lines.append(f"  comp#{cid} {node.name}: {node.type_signature}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())

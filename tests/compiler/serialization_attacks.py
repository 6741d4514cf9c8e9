"""Crafted fedcore files for the safety tests and the fuzz driver: valid checksums, hostile content.

Files are built from real traces, with the save-time graph check switched off while
saving (``unchecked_serialize``), or by rewriting a file's header and graphs and packing
them again (``rewrite``), which recomputes every checksum.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

import fedcore
from fedcore.compiler import graph_safety, serialization

MAGIC = serialization.MAGIC


def split(data: bytes) -> Tuple[Dict[str, Any], List[bytes]]:
    """A file's header and its graph sections."""
    header_len = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "big")
    start = len(MAGIC) + 8
    header = json.loads(data[start:start + header_len])
    payload = data[start + header_len:-32]
    sections = [payload[f["offset"]:f["offset"] + f["length"]] for f in header["functions"]]
    return header, sections


def pack(header: Dict[str, Any], sections: List[bytes], fix_offsets: bool = True) -> bytes:
    """A file from a header and sections, with offsets, lengths (updated in ``header``) and every SHA-256 recomputed."""
    import hashlib

    if fix_offsets and isinstance(header.get("functions"), list):
        offset = 0
        for meta, graph in zip(header["functions"], sections):
            if not isinstance(meta, dict):
                continue
            meta.update(offset=offset, length=len(graph), sha256=hashlib.sha256(graph).hexdigest())
            offset += len(graph)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = MAGIC + len(head).to_bytes(8, "big") + head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


def pack_raw_header(head: bytes, payload: bytes = b"") -> bytes:
    """A file whose header is the given bytes (any text, even invalid JSON), with a valid file checksum."""
    import hashlib

    body = MAGIC + len(head).to_bytes(8, "big") + head + payload
    return body + hashlib.sha256(body).digest()


def rewrite(data: bytes, change_header: Optional[Callable[[Dict[str, Any]], None]] = None,
            change_graph: Optional[Callable[[Any], None]] = None, index: int = 0) -> bytes:
    """``data`` with its header and/or its ``index``-th GraphDef changed in place by the callbacks."""
    header, sections = split(data)
    if change_graph is not None:
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(sections[index])
        change_graph(graph_def)
        sections[index] = graph_def.SerializeToString()
    if change_header is not None:
        change_header(header)
    return pack(header, sections)


@contextlib.contextmanager
def graph_check_disabled():
    """Lets ``serialize`` write graphs that loading must refuse (to build attack files)."""
    original = graph_safety.check_graph_def
    serialization.graph_safety.check_graph_def = lambda graph_def, label, check_ops=True: None
    try:
        yield
    finally:
        serialization.graph_safety.check_graph_def = original


def unchecked_serialize(comp: Any) -> bytes:
    with graph_check_disabled():
        return serialization.serialize(comp)


# --------------------------------------------------------------------------
# Attack files.  Each names paths under ``directory``.


def writes_a_file(directory: str) -> bytes:
    path = f"file://{directory}/written.txt"

    @fedcore.tf_computation(tf.float32)
    def innocent(x):
        with tf.control_dependencies([tf.io.write_file(path, "pwned")]):
            return tf.identity(x)

    return unchecked_serialize(innocent)


def reads_a_file(directory: str) -> bytes:
    path = f"{directory}/secret.txt"

    @fedcore.tf_computation(tf.float32)
    def innocent(x):
        return tf.strings.length(tf.io.read_file(path))

    return unchecked_serialize(innocent)


def lists_files(directory: str) -> bytes:
    pattern = f"{directory}/*"

    @fedcore.tf_computation(tf.float32)
    def innocent(x):
        return tf.strings.reduce_join(tf.io.matching_files(pattern), separator=",")

    return unchecked_serialize(innocent)


PRINT_MARKER = "fedcore-print-marker"


def prints(directory: str) -> bytes:
    path = f"file://{directory}/printed.txt"

    @fedcore.tf_computation(tf.float32)
    def innocent(x):
        with tf.control_dependencies([tf.print(PRINT_MARKER, x, output_stream=path)]):
            return tf.identity(x)

    return unchecked_serialize(innocent)


def prints_to_stderr() -> bytes:
    @fedcore.tf_computation(tf.float32)
    def innocent(x):
        with tf.control_dependencies([tf.print(PRINT_MARKER, x)]):
            return tf.identity(x)

    return unchecked_serialize(innocent)


def calls_a_function() -> bytes:
    """A legitimate file whose graph calls a library function (through PartitionedCall), which calls another."""

    @tf.function(autograph=False)
    def double(v):
        return v * 2.0

    @tf.function(autograph=False)
    def inner(v):
        return double(v) + 1.0

    @fedcore.tf_computation(tf.float32)
    def outer(x):
        return inner(x)

    return serialization.serialize(outer)


def _calls(graph_def: Any) -> List[Any]:
    """Every node, in the graph or its library, with a func attr."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n for n in nodes if any(v.WhichOneof("value") == "func" for v in n.attr.values())]


def _func_attr(node: Any) -> Any:
    return next(v for v in node.attr.values() if v.WhichOneof("value") == "func")


def recursive_library(mutual: bool = False) -> bytes:
    """The file of ``calls_a_function``, with its first library function calling itself (or, with ``mutual``,
    its two library functions calling each other)."""

    def change(graph_def):
        functions = {f.signature.name: f for f in graph_def.library.function}
        for f in graph_def.library.function:
            for node in f.node_def:
                for value in node.attr.values():
                    if value.WhichOneof("value") == "func" and value.func.name in functions:
                        callee = functions[value.func.name]
                        if not mutual:
                            value.func.name = f.signature.name
                            return
                        # The callee has no call of its own: give it one, back to its caller.
                        call = callee.node_def.add()
                        call.CopyFrom(node)
                        call.name = "back_to_caller"
                        del call.input[:]
                        call.input.extend([callee.signature.input_arg[0].name])
                        for v in call.attr.values():
                            if v.WhichOneof("value") == "func":
                                v.func.name = f.signature.name
                        return
        raise AssertionError("no library function calls another")

    return rewrite(calls_a_function(), change_graph=change)


def call_chain(n: int) -> bytes:
    """The file of ``calls_a_function`` with ``n`` more functions between its two: a chain of calls ``n + 2`` deep.

    Every function is renamed (prefixed ``chain_``) so that none collides with one this process traced.
    """

    def change(graph_def):
        caller, callee = None, None
        names = {f.signature.name for f in graph_def.library.function}
        for f in graph_def.library.function:
            for node in f.node_def:
                for value in node.attr.values():
                    if value.WhichOneof("value") == "func" and value.func.name in names:
                        caller, callee = f, value.func.name
        links = []
        for i in range(n):
            link = graph_def.library.function.add()
            link.CopyFrom(caller)
            link.signature.name = f"link_{i}"
            links.append(link)
        # caller -> link_0 -> ... -> link_{n-1} -> callee
        for i, f in enumerate([caller] + links):
            target = f"link_{i}" if i < n else callee
            for node in f.node_def:
                for value in node.attr.values():
                    if value.WhichOneof("value") == "func" and value.func.name in names | {f"link_{j}" for j in range(n)}:
                        value.func.name = target
        renamed = {f.signature.name for f in graph_def.library.function}

        def rename(value):
            if value.WhichOneof("value") == "func" and value.func.name in renamed:
                value.func.name = "chain_" + value.func.name

        for f in graph_def.library.function:
            for node in f.node_def:
                for value in node.attr.values():
                    rename(value)
            f.signature.name = "chain_" + f.signature.name
        for node in graph_def.node:
            for value in node.attr.values():
                rename(value)

    return rewrite(calls_a_function(), change_graph=change)


def undefined_function() -> bytes:
    def change(graph_def):
        _func_attr(_calls(graph_def)[0]).func.name = "no_such_function"

    return rewrite(calls_a_function(), change_graph=change)


def plain() -> bytes:
    @fedcore.tf_computation(tf.float32)
    def add_half(x):
        return x + 0.5

    return serialization.serialize(add_half)


def contradicting_const(field: str = "dtype") -> bytes:
    """``plain()`` with its constant's tensor contradicting the node: its dtype, or (``field="content"``) its size."""

    def change(graph_def):
        const = next(n for n in graph_def.node if n.op == "Const")
        tensor = const.attr["value"].tensor
        if field == "dtype":
            tensor.dtype = tf.int32.as_datatype_enum
            del tensor.float_val[:]
            tensor.int_val.extend([7])
        else:
            tensor.tensor_shape.dim.add().size = 4
            tensor.tensor_content = b"\x00" * 12  # 3 floats for 4 elements
            del tensor.float_val[:]

    return rewrite(plain(), change_graph=change)


def deep_header(depth: int) -> bytes:
    """A file whose header's JSON nests ``depth`` lists deep (inside a field the loader would read)."""
    header, sections = split(plain())
    head = json.dumps({**header, "name": "@@"}).encode()
    head = head.replace(b'"@@"', b"[" * depth + b"]" * depth)
    payload = b"".join(sections)
    return pack_raw_header(head, payload)


def deep_ir(depth: int) -> bytes:
    """A computation of int32 whose IR is ``depth`` nested lambdas applied (``(y -> (y -> ... x)(x))(x)``).

    Its JSON is written as text: Python's json module cannot write it that deep either.
    """
    header, _ = split(plain())
    header.update(type_signature="(int32 -> int32)", name="deep", functions=[], ir="@@")
    t = '{"t":"int32"}'
    level = (f'{{"k":"Call","argument":{{"k":"Reference","name":"x","type":{t}}},'
             f'"function":{{"k":"Lambda","parameter_name":"y","parameter_type":{t},"result":')
    ir = (f'{{"k":"Lambda","parameter_name":"x","parameter_type":{t},"result":' + level * depth
          + f'{{"k":"Reference","name":"x","type":{t}}}' + "}}" * depth + "}")
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).replace('"@@"', ir)
    return pack_raw_header(head.encode())


def shared_entries(n: int) -> bytes:
    """``plain()``'s graph named by ``n`` function entries (all at the same offset), used by a struct of ``n`` calls."""
    header, sections = split(plain())
    meta = header["functions"][0]
    tf_node = header["ir"]
    calls = []
    for i in range(n):
        calls.append([None, {"k": "Call", "function": {**tf_node, "function": i},
                             "argument": {"k": "Reference", "name": "x", "type": {"t": "float32"}}}])
    header["functions"] = [dict(meta) for _ in range(n)]
    header["ir"] = {"k": "Lambda", "parameter_name": "x", "parameter_type": {"t": "float32"},
                    "result": {"k": "Struct", "elements": calls, "container": None}}
    header["type_signature"] = f"(float32 -> <{','.join(['float32'] * n)}>)"
    return pack(header, sections, fix_offsets=False)

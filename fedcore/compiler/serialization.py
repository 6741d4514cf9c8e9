"""Safe serialization of computations: ``serialize(comp) -> bytes`` and ``deserialize(data) -> Computation``.

The format holds data only, never pickled Python objects::

    b"FEDCORE-COMPUTATION\\n"           magic (20 bytes)
    header length                        8 bytes, big-endian
    header                               UTF-8 JSON (see below)
    sections                             the TF graphs, as serialized GraphDef bytes
    SHA-256                              32 bytes, over everything before it

The JSON header holds ``format`` (``"fedcore.computation"``), ``version``,
the computation's ``name``, ``type_signature`` (notation string),
``parameter_names``, the IR as a JSON tree of nodes (types as notation strings,
with the Python containers of struct types as a parallel tree) and one entry
per TensorFlow computation: its parameter and result types, the names of its
input and output tensors, and the offset, length and SHA-256 of its GraphDef.

A TF computation's captured values (e.g. a Keras model's weights read through
``stateless_call``) are frozen into the graph as constants.  Computations that
assign ``tf.Variable`` s are refused.  Loading rebuilds each TF computation by
importing its GraphDef (``ImportedTFFunction``); no Python code from the file
runs.  Containers that are classes (namedtuples, attrs classes) are found by
module and name among modules already imported, never by importing.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct as _struct
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import graph_safety, tf_bridge
from fedcore.compiler.computation import Computation
from fedcore.compiler.intrinsics import lookup
from fedcore.compiler.serialization_values import (
    SerializationError,
    dec_container,
    dec_literal_value,
    dec_type,
    enc_container,
    enc_literal_value,
    enc_type,
)
from fedcore.compiler.tf_function import TFCalls
from fedcore.types import FunctionType, TensorType, Type
from fedcore.types.core import PLACEMENTS

FORMAT = "fedcore.computation"
VERSION = 1
MAGIC = b"FEDCORE-COMPUTATION\n"
_LEN = 8
_HASH = 32

# Ops that would call back into Python: refused when saving and when loading.
_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

# Limits on what a file may make the loader do; each is far above what fedcore writes
# (federated averaging with a Keras model: a 40 KB header nested 28 deep, 5 graphs).
MAX_HEADER_BYTES = 256 << 20
MAX_JSON_DEPTH = 512
# Deeper IR would exhaust Python's stack in the passes and interpreters that walk it.
MAX_IR_DEPTH = 160
MAX_IR_NODES = 1_000_000
MAX_FUNCTION_ENTRIES = 4096
MAX_GRAPH_BYTES = 2 << 30


__all__ = [
    "serialize", "deserialize", "SerializationError", "ImportedTFFunction", "FORMAT", "VERSION",
    "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "MAX_IR_DEPTH", "MAX_IR_NODES", "MAX_FUNCTION_ENTRIES", "MAX_GRAPH_BYTES",
]


# --------------------------------------------------------------------------
# IR nodes <-> JSON.


class _Encoder:
    def __init__(self, trusted: bool = False):
        self.trusted = trusted
        self.functions: List[Tuple[bb.TensorFlowComputation, Dict[str, Any], bytes]] = []
        self.index: Dict[int, int] = {}

    def node(self, n: bb.BuildingBlock) -> Dict[str, Any]:
        match n:
            case bb.Reference(name=name, type_signature=t):
                return {"k": "Reference", "name": name, "type": enc_type(t)}
            case bb.Selection(source=s, index=i, name=name):
                return {"k": "Selection", "source": self.node(s), "index": i, "name": name}
            case bb.Struct(elements=elements, container=c):
                return {"k": "Struct", "elements": [[nm, self.node(e)] for nm, e in elements], "container": enc_container(c)}
            case bb.Call(function=f, argument=a):
                return {"k": "Call", "function": self.node(f), "argument": None if a is None else self.node(a)}
            case bb.Lambda(parameter_name=p, parameter_type=t, result=r):
                return {"k": "Lambda", "parameter_name": p, "parameter_type": enc_type(t), "result": self.node(r)}
            case bb.Block(locals=locs, result=r):
                return {"k": "Block", "locals": [[nm, self.node(v)] for nm, v in locs], "result": self.node(r)}
            case bb.Intrinsic(uri=uri, type_signature=t):
                return {"k": "Intrinsic", "uri": uri, "type": enc_type(t)}
            case bb.Literal(value=v, type_signature=t):
                return {"k": "Literal", "value": enc_literal_value(v), "type": enc_type(t)}
            case bb.Placement(placement=p):
                return {"k": "Placement", "placement": p.name}
            case bb.Data(uri=uri, type_signature=t):
                return {"k": "Data", "uri": uri, "type": enc_type(t)}
            case bb.TensorFlowComputation(type_signature=t, name=name, id=cid):
                return {"k": "TensorFlowComputation", "function": self.function(n), "type": enc_type(t), "name": name, "id": cid}
        raise SerializationError(f"cannot serialize IR node {n!r}")

    def function(self, node: bb.TensorFlowComputation) -> int:
        key = id(node.function)
        if key not in self.index:
            self.index[key] = len(self.functions)
            meta, graph = _export_function(node, self.trusted)
            self.functions.append((node, meta, graph))
        return self.index[key]


class _Decoder:
    def __init__(self, functions: List[Any]):
        self.functions = functions
        # The names bound where the node being decoded sits, with their types: a reference to
        # anything else, or at another type, would only fail (or worse) when the IR runs.
        self.scope: Dict[str, Type] = {}

    def node(self, d: Dict[str, Any]) -> bb.BuildingBlock:
        k = d["k"]
        if k == "Reference":
            name, t = d["name"], dec_type(d["type"])
            if name not in self.scope:
                raise SerializationError(f"corrupted fedcore file: a reference to {name!r}, which nothing binds")
            if self.scope[name] != t:
                raise SerializationError(
                    f"corrupted fedcore file: a reference to {name!r} has type {t}, but {name!r} is bound to "
                    f"a value of type {self.scope[name]}"
                )
            return bb.Reference(name, t)
        if k == "Selection":
            return bb.Selection(self.node(d["source"]), d["index"], d["name"])
        if k == "Struct":
            return bb.Struct([(nm, self.node(e)) for nm, e in d["elements"]], container=dec_container(d["container"]))
        if k == "Call":
            return bb.Call(self.node(d["function"]), None if d["argument"] is None else self.node(d["argument"]))
        if k == "Lambda":
            outer = dict(self.scope)
            parameter_type = dec_type(d["parameter_type"])
            if d["parameter_name"] is not None:
                self.scope[d["parameter_name"]] = parameter_type
            try:
                return bb.Lambda(d["parameter_name"], parameter_type, self.node(d["result"]))
            finally:
                self.scope = outer
        if k == "Block":
            outer = dict(self.scope)
            try:
                locals_ = []
                for nm, v in d["locals"]:
                    value = self.node(v)
                    self.scope[nm] = value.type_signature
                    locals_.append((nm, value))
                return bb.Block(locals_, self.node(d["result"]))
            finally:
                self.scope = outer
        if k == "Intrinsic":
            return _dec_intrinsic(d["uri"], dec_type(d["type"]))
        if k == "Literal":
            value, t = dec_literal_value(d["value"]), dec_type(d["type"])
            if isinstance(t, TensorType) and t.dtype != "string":
                shape = np.shape(value)
                fits = t.shape is None or (
                    len(shape) == len(t.shape) and all(d is None or d == s for d, s in zip(t.shape, shape))
                )
                if not fits or (isinstance(value, (np.ndarray, np.generic)) and value.dtype != t.np_dtype):
                    raise SerializationError(
                        f"corrupted fedcore file: a literal of type {t} holds a {np.asarray(value).dtype} value "
                        f"of shape {list(shape)}"
                    )
            return bb.Literal(value, t)
        if k == "Placement":
            if d["placement"] not in PLACEMENTS:
                raise SerializationError(f"unknown placement {d['placement']!r}")
            return bb.Placement(PLACEMENTS[d["placement"]])
        if k == "Data":
            return bb.Data(d["uri"], dec_type(d["type"]))
        if k == "TensorFlowComputation":
            index = int(d["function"])
            if not 0 <= index < len(self.functions):
                raise SerializationError(f"corrupted fedcore file: TF computation number {index} does not exist")
            fn, t = self.functions[index], dec_type(d["type"])
            if t != FunctionType(fn.parameter_type, fn.result_type):
                raise SerializationError(
                    f"corrupted fedcore file: a TF computation node has type {t}, but its graph "
                    f"{fn.name} is ({fn.parameter_type} -> {fn.result_type})"
                )
            return bb.TensorFlowComputation(fn, t, d["name"], d["id"])
        raise SerializationError(f"unknown IR node kind {k!r}")


def _dec_intrinsic(uri: Any, t: Optional[Type]) -> bb.Intrinsic:
    """An intrinsic node, checked against the registry: a known uri, at a type its signature gives."""
    try:
        definition = lookup(str(uri))
    except ValueError as e:
        raise SerializationError(f"corrupted fedcore file: {e}") from None
    if isinstance(definition.generic_type, FunctionType):
        if not isinstance(t, FunctionType):
            raise SerializationError(f"corrupted fedcore file: intrinsic {uri} has type {t}, which is not a function")
        try:
            expected = definition.instantiate(t.parameter)
        except TypeError as e:
            raise SerializationError(f"corrupted fedcore file: intrinsic {uri} at type {t}: {e}") from None
        if expected != t:
            raise SerializationError(
                f"corrupted fedcore file: intrinsic {uri} has type {t}, but its signature gives {expected}"
            )
    return bb.Intrinsic(uri, t)


# --------------------------------------------------------------------------
# TensorFlow functions.


def _graph_ops(graph_def: Any) -> set:
    ops = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        ops.update(n.op for n in f.node_def)
    return ops


def _export_function(node: bb.TensorFlowComputation, trusted: bool = False) -> Tuple[Dict[str, Any], bytes]:
    fn = node.function
    label = node.name or getattr(fn, "name", "") or f"comp#{node.id}"
    if isinstance(fn, ImportedTFFunction):
        meta = {"name": fn.name, "parameter_type": enc_type(fn.parameter_type), "result_type": enc_type(fn.result_type),
                "inputs": list(fn._input_names), "outputs": list(fn._output_names)}
        graph_safety.check_graph_def(fn._graph_def, label, check_ops=not trusted)
        return meta, fn._graph_def.SerializeToString()
    cf = getattr(fn, "concrete_function", None)
    if cf is None:
        raise SerializationError(f"TF computation {label} has no traced TensorFlow function to serialize")
    if fn.writes_variables:
        raise SerializationError(
            f"TF computation {label} assigns tf.Variables; only pure TF computations can be serialized "
            "(e.g. write models with stateless calls, taking and returning their weights)"
        )
    parameter_type = node.type_signature.parameter
    n_in = len(tf_bridge.flat_specs(parameter_type))
    if cf.captured_inputs:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        try:
            cf = convert_variables_to_constants_v2(cf)
        except Exception as e:  # noqa: BLE001
            raise SerializationError(f"TF computation {label}: cannot freeze its captured values: {e}") from e
        if cf.captured_inputs:
            raise SerializationError(f"TF computation {label} captures values that cannot be frozen into constants")
    graph_def = cf.graph.as_graph_def()
    bad = _graph_ops(graph_def) & _PYTHON_OPS
    if bad:
        raise SerializationError(f"TF computation {label} calls Python ({', '.join(sorted(bad))}); it cannot be serialized")
    # What loading would refuse is refused here already, so that no file fedcore writes fails to load.
    graph_safety.check_graph_def(graph_def, label, check_ops=not trusted)
    meta = {
        "name": label,
        "parameter_type": enc_type(parameter_type),
        "result_type": enc_type(node.type_signature.result),
        "inputs": [t.name for t in cf.inputs[:n_in]],
        "outputs": [t.name for t in cf.outputs],
    }
    return meta, graph_def.SerializeToString()


class _ImportedGraph:
    """A checked GraphDef imported once into a TF graph, shared by every function entry over the same bytes."""

    def __init__(self, graph_def: Any):
        self.graph_def = graph_def

        def import_graph():
            tf.compat.v1.import_graph_def(graph_def, name="")

        self.wrapped = tf.compat.v1.wrap_function(import_graph, [])


class ImportedTFFunction(TFCalls):
    """A TF computation rebuilt from a GraphDef: a ``building_blocks.TensorFlowFunction``, as ``TFFunction`` is.

    Its fingerprint is computed from the GraphDef it was loaded from, so a
    function that captured nothing keeps the fingerprint it had when traced.
    The ``tf.function`` that runs it is traced on first use.
    """

    writes_variables = False
    variables: Tuple[Any, ...] = ()

    def __init__(self, graph_def: Any, input_names: List[str], output_names: List[str],
                 parameter_type: Optional[Type], result_type: Type, name: str, imported: Optional[_ImportedGraph] = None):
        self.name = name
        self.parameter_type = parameter_type
        self.result_type = result_type
        self._graph_def = graph_def
        self._input_names = tuple(input_names)
        self._output_names = tuple(output_names)
        # Shared with renamed copies, which trace once for all.
        self._traced: List[Any] = []
        wrapped = (imported or _ImportedGraph(graph_def)).wrapped
        graph = wrapped.graph
        out_specs = tf_bridge.flat_specs(result_type)
        in_specs = tf_bridge.flat_specs(parameter_type)
        if len(out_specs) != len(output_names):
            raise SerializationError(f"TF computation {name}: {len(output_names)} outputs for result type {result_type}")
        if len(in_specs) != len(input_names):
            raise SerializationError(f"TF computation {name}: {len(input_names)} inputs for parameter type {parameter_type}")
        feeds, fetches = [], []
        for kind, names, tensors in (("input", input_names, feeds), ("output", output_names, fetches)):
            for n in names:
                try:
                    tensors.append(graph.get_tensor_by_name(n))
                except (KeyError, ValueError, TypeError) as e:
                    raise SerializationError(f"TF computation {name}: its {kind} {n!r} is not in its graph ({e})") from None
        for tensor in feeds:
            if tensor.op.type != "Placeholder":
                raise SerializationError(f"TF computation {name}: its input {tensor.name} is not a placeholder")
        for kind, tensors, specs, t in (("input", feeds, in_specs, parameter_type), ("output", fetches, out_specs, result_type)):
            for tensor, spec in zip(tensors, specs):
                dataset = isinstance(spec, tf.data.DatasetSpec)
                if tensor.dtype != (tf.variant if dataset else spec.dtype) or (
                    not dataset and not spec.shape.is_compatible_with(tensor.shape)
                ):
                    raise SerializationError(
                        f"TF computation {name}: its graph's {kind} {tensor.name} is a {tensor.dtype.name} tensor "
                        f"of shape {tensor.shape}, which does not fit its declared type {t}"
                    )
        self._pruned = wrapped.prune(feeds=feeds, fetches=fetches) if fetches else None
        self._out_specs = out_specs

    def renamed(self, name: str) -> "ImportedTFFunction":
        """The same function under another name, sharing its imported graph and its tracing."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.name = name
        return copy

    def _trace(self) -> Tuple[Any, Any]:
        if not self._traced:
            out_specs = self._out_specs

            def flat_call(*leaves):
                if self._pruned is None:
                    return []
                feeds_in = [tf.data.experimental.to_variant(v) if isinstance(v, tf.data.Dataset) else v for v in leaves]
                out = self._pruned(*feeds_in)
                out = list(out) if isinstance(out, (list, tuple)) else [out]
                return [
                    tf.data.experimental.from_variant(o, spec.element_spec) if isinstance(spec, tf.data.DatasetSpec) else o
                    for o, spec in zip(out, out_specs)
                ]

            function = tf.function(flat_call, input_signature=tf_bridge.flat_specs(self.parameter_type), autograph=False)
            try:
                concrete = function.get_concrete_function()
            except Exception as e:  # noqa: BLE001 -- TF's errors for a graph it cannot run
                raise SerializationError(
                    f"TF computation {self.name}: cannot rebuild it from its graph: {type(e).__name__}: {e}"
                ) from None
            self._traced.append((function, concrete))
        return self._traced[0]

    @property
    def _tf_function(self) -> Any:
        return self._trace()[0]

    @property
    def concrete_function(self) -> Any:
        return self._trace()[1]

    def _graph_parts(self) -> Tuple[Any, List[str], List[str]]:
        return self._graph_def, list(self._input_names), list(self._output_names)

    def __repr__(self) -> str:
        return f"<ImportedTFFunction {self.name}: {self.parameter_type} -> {self.result_type}>"


class _Functions:
    """The file's function entries, each imported when the IR first names it.

    Graphs are parsed, checked and imported once per content (SHA-256), and an
    entry equal to an earlier one but for its name shares that one's function:
    a file cannot make loading slow by repeating a graph.
    """

    def __init__(self, metas: Any, payload: bytes, trusted: bool = False):
        self.trusted = trusted
        if not isinstance(metas, list):
            raise SerializationError("corrupted fedcore file: its functions are not a list")
        if len(metas) > MAX_FUNCTION_ENTRIES:
            raise SerializationError(
                f"corrupted fedcore file: {len(metas)} TF computations, more than the {MAX_FUNCTION_ENTRIES} fedcore loads"
            )
        self.metas = metas
        self.payload = payload
        self.loaded: Dict[int, ImportedTFFunction] = {}
        self.graphs: Dict[str, Tuple[Any, Optional[_ImportedGraph]]] = {}
        self.by_content: Dict[Any, ImportedTFFunction] = {}
        self.imports = 0  # how many graphs were imported into TF (tests count them)
        for meta in metas:
            if not isinstance(meta, dict):
                raise SerializationError("corrupted fedcore file: a function entry is not a JSON object")
            off, length = int(meta["offset"]), int(meta["length"])
            if off < 0 or length < 0 or off + length > len(payload):
                raise SerializationError(f"corrupted fedcore file: the graph of {meta.get('name')} is out of range")

    def __len__(self) -> int:
        return len(self.metas)

    def __getitem__(self, index: int) -> ImportedTFFunction:
        if index not in self.loaded:
            self.loaded[index] = self._load(self.metas[index])
        return self.loaded[index]

    def check_all_used(self) -> None:
        unused = sorted(set(range(len(self.metas))) - set(self.loaded))
        if unused:
            raise SerializationError(
                f"corrupted fedcore file: TF computation number {unused[0]} ({self.metas[unused[0]].get('name')}) "
                "is not used by the computation"
            )

    def _load(self, meta: Dict[str, Any]) -> ImportedTFFunction:
        name = str(meta["name"])
        off, length = int(meta["offset"]), int(meta["length"])
        graph = self.payload[off:off + length]
        digest = hashlib.sha256(graph).hexdigest()
        if digest != meta["sha256"]:
            raise SerializationError(f"corrupted fedcore file: the graph of {name} fails its checksum")
        inputs, outputs = [str(n) for n in meta["inputs"]], [str(n) for n in meta["outputs"]]
        parameter_type, result_type = dec_type(meta["parameter_type"]), dec_type(meta["result_type"])
        key = (digest, tuple(inputs), tuple(outputs), str(parameter_type), str(result_type),
               json.dumps([meta["parameter_type"], meta["result_type"]], sort_keys=True))
        if key in self.by_content:
            earlier = self.by_content[key]
            return earlier if earlier.name == name else earlier.renamed(name)
        if digest not in self.graphs:
            graph_def = _parse_graph(name, graph, self.trusted)
            self.graphs[digest] = (graph_def, None)
        graph_def, imported = self.graphs[digest]
        try:
            if imported is None:
                self.imports += 1
                imported = _ImportedGraph(graph_def)
                self.graphs[digest] = (graph_def, imported)
            fn = ImportedTFFunction(graph_def, inputs, outputs, parameter_type, result_type, name, imported)
        except SerializationError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SerializationError(f"TF computation {name}: cannot rebuild it from its graph: {type(e).__name__}: {e}") from None
        self.by_content[key] = fn
        return fn


def _parse_graph(name: str, graph_bytes: bytes, trusted: bool) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(graph_bytes)
    except Exception as e:  # noqa: BLE001 -- protobuf's DecodeError
        raise SerializationError(f"TF computation {name}: its graph is not a valid GraphDef: {e}") from None
    bad = _graph_ops(graph_def) & _PYTHON_OPS
    if bad:
        raise SerializationError(f"TF computation {name} calls Python ({', '.join(sorted(bad))}); refusing to load it")
    graph_safety.check_graph_def(graph_def, name, check_ops=not trusted)
    return graph_def



# --------------------------------------------------------------------------
# The container format.


def _pack(header: Dict[str, Any], sections: List[bytes]) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = MAGIC + _struct.pack(">Q", len(head)) + head + b"".join(sections)
    return body + hashlib.sha256(body).digest()


_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)


def _json_depth(text: bytes) -> int:
    """How deeply JSON text nests its arrays and objects, found in linear time without parsing (nor recursion).

    With escapes gone, every quote opens or closes a string; a bracket counts where the
    quotes before it are even in number.  (For text that is not JSON the number means
    nothing, and parsing then fails.)
    """
    chars = np.frombuffer(_JSON_ESCAPE.sub(b"", text), dtype=np.uint8)
    outside = (np.cumsum(chars == ord('"')) % 2) == 0
    steps = (np.isin(chars, (ord("["), ord("{"))).astype(np.int64) - np.isin(chars, (ord("]"), ord("}")))) * outside
    return int(np.cumsum(steps).max(initial=0))


_IR_CHILDREN = {
    "Selection": ("source",), "Call": ("function", "argument"), "Lambda": ("result",),
}


def _check_ir_shape(ir: Any) -> None:
    """The IR tree's depth and size, walked with a stack, so that decoding it (which recurses) stays shallow."""
    count, stack = 0, [(ir, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("k"), str):
            raise SerializationError(f"corrupted fedcore file: an IR node is {type(node).__name__}, not a JSON object with a kind")
        count += 1
        if depth > MAX_IR_DEPTH:
            raise SerializationError(
                f"corrupted fedcore file: its IR nests more than {MAX_IR_DEPTH} levels deep, more than fedcore loads"
            )
        if count > MAX_IR_NODES:
            raise SerializationError(f"corrupted fedcore file: its IR has more than {MAX_IR_NODES} nodes")
        kind = node["k"]
        children: List[Any] = [node.get(key) for key in _IR_CHILDREN.get(kind, ())]
        if kind == "Call" and node.get("argument") is None:
            children.pop()
        if kind in ("Struct", "Block"):
            pairs = node.get("elements" if kind == "Struct" else "locals")
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise SerializationError(f"corrupted fedcore file: a {kind} node's elements are not [name, node] pairs")
            children += [p[1] for p in pairs]
            if kind == "Block":
                children.append(node.get("result"))
        stack.extend((c, depth + 1) for c in children)


def _unpack(data: Any) -> Tuple[Dict[str, Any], bytes]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"deserialize() expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise SerializationError("truncated fedcore file: it ends inside the file signature")
        raise SerializationError("not a fedcore computation file (missing the FEDCORE-COMPUTATION signature)")
    if len(data) < len(MAGIC) + _LEN + _HASH:
        raise SerializationError(f"truncated fedcore file: only {len(data)} bytes")
    body, digest = data[:-_HASH], data[-_HASH:]
    (head_len,) = _struct.unpack(">Q", body[len(MAGIC):len(MAGIC) + _LEN])
    start = len(MAGIC) + _LEN
    if hashlib.sha256(body).digest() != digest:
        if start + head_len + _HASH > len(data):
            raise SerializationError("truncated fedcore file: it is shorter than its header says")
        raise SerializationError("the fedcore file is corrupted or was tampered with: its SHA-256 checksum does not match")
    if start + head_len > len(body):
        raise SerializationError("corrupted fedcore file: the header length is out of range")
    if head_len > MAX_HEADER_BYTES:
        raise SerializationError(
            f"corrupted fedcore file: its header has {head_len} bytes, more than the {MAX_HEADER_BYTES} fedcore reads"
        )
    if len(body) - start - head_len > MAX_GRAPH_BYTES:
        raise SerializationError(f"corrupted fedcore file: its graphs take more than {MAX_GRAPH_BYTES} bytes")
    head = body[start:start + head_len]
    depth = _json_depth(head)
    if depth > MAX_JSON_DEPTH:
        raise SerializationError(
            f"corrupted fedcore file: its header nests {depth} levels deep, more than the {MAX_JSON_DEPTH} fedcore reads"
        )
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SerializationError(f"corrupted fedcore file: the header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SerializationError("corrupted fedcore file: the header is not a JSON object")
    if header.get("format") != FORMAT:
        raise SerializationError(f"not a fedcore computation file: format {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise SerializationError(
            f"unsupported fedcore computation format version {header.get('version')!r}; this fedcore reads version {VERSION}"
        )
    return header, body[start + head_len:]


def serialize(comp: Any, *, trusted: bool = False) -> bytes:
    """The bytes of ``comp`` (a Computation, an IR node, or a deployment form) in fedcore's data-only format.

    Graphs that ``deserialize`` would refuse are refused here too.  ``trusted=True`` accepts
    any registered TF op, for bytes only ``deserialize(..., trusted=True)`` will read (an
    executor shipping work to its own workers).
    """
    from fedcore.compiler import forms

    if isinstance(comp, (forms.MapReduceForm, forms.DistributeAggregateForm)):
        return _serialize_form(comp, trusted)
    if isinstance(comp, Computation):
        ir, name, parameter_names = comp.ir, comp.name, comp.parameter_names
    elif isinstance(comp, bb.BuildingBlock):
        ir, name, parameter_names = comp, "", None
    elif hasattr(comp, "_fedcore_specialize"):
        raise SerializationError(
            f"{getattr(comp, 'name', comp)} is polymorphic; give its decorator parameter types to serialize it"
        )
    else:
        raise SerializationError(f"serialize() expects a fedcore Computation, got {type(comp).__name__}")
    encoder = _Encoder(trusted)
    header = {"format": FORMAT, "version": VERSION, **_computation_entry(encoder, ir, name, parameter_names)}
    return _finish(header, encoder)


def _computation_entry(encoder: "_Encoder", ir: bb.BuildingBlock, name: str, parameter_names: Any) -> Dict[str, Any]:
    return {
        "name": name,
        "type_signature": str(ir.type_signature),
        "parameter_names": None if parameter_names is None else list(parameter_names),
        "ir": encoder.node(ir),
    }


def _finish(header: Dict[str, Any], encoder: "_Encoder") -> bytes:
    """Adds the encoder's TF graphs as sections after the header; packs it all."""
    sections, functions, offset = [], [], 0
    for _, meta, graph in encoder.functions:
        functions.append({**meta, "offset": offset, "length": len(graph), "sha256": hashlib.sha256(graph).hexdigest()})
        sections.append(graph)
        offset += len(graph)
    return _pack({**header, "functions": functions}, sections)


_FORM_KINDS = {"MapReduceForm": "map_reduce", "DistributeAggregateForm": "distribute_aggregate"}


def _serialize_form(form: Any, trusted: bool = False) -> bytes:
    """A form's pieces, each stored as a computation; TF graphs shared between pieces are stored once."""
    encoder = _Encoder(trusted)
    pieces = {
        name: _computation_entry(encoder, comp.ir, comp.name, comp.parameter_names)
        for name, comp in form.pieces().items()
    }
    header = {
        "format": FORMAT,
        "version": VERSION,
        "form": _FORM_KINDS[type(form).__name__],
        "type_signature": str(form.type_signature),
        "form_type": enc_type(form.type_signature),
        "pieces": pieces,
    }
    return _finish(header, encoder)


def _decode_computation(entry: Dict[str, Any], functions: List[Any]) -> Computation:
    ir = _Decoder(functions).node(entry["ir"])
    signature = str(ir.type_signature)
    if signature != entry["type_signature"]:
        raise SerializationError(
            f"corrupted fedcore file: the IR has type {signature}, the header says {entry['type_signature']}"
        )
    names = entry["parameter_names"]
    return Computation(ir, str(entry["name"]), None if names is None else tuple(str(n) for n in names))


def _decode_form(header: Dict[str, Any], functions: List[Any]) -> Any:
    from fedcore.compiler import forms

    classes = {"map_reduce": forms.MapReduceForm, "distribute_aggregate": forms.DistributeAggregateForm}
    cls = classes.get(header["form"])
    if cls is None:
        raise SerializationError(f"corrupted fedcore file: unknown form {header['form']!r}")
    pieces = header["pieces"]
    if not isinstance(pieces, dict) or sorted(pieces) != sorted(cls.PIECES):
        raise SerializationError(
            f"corrupted fedcore file: a {cls.__name__} needs the pieces {', '.join(cls.PIECES)}, "
            f"the file has {', '.join(sorted(pieces)) if isinstance(pieces, dict) else pieces!r}"
        )
    form_type = dec_type(header["form_type"])
    if str(form_type) != header["type_signature"]:
        raise SerializationError(
            f"corrupted fedcore file: the form's type is {form_type}, the header says {header['type_signature']}"
        )
    try:
        return cls(form_type, **{name: _decode_computation(pieces[name], functions) for name in cls.PIECES})
    except forms.FormError as e:
        raise SerializationError(f"corrupted fedcore file: {e}") from None


def deserialize(data: bytes, *, trusted: bool = False) -> Any:
    """Reads back a computation or form written by ``serialize``; raises SerializationError for anything else.

    Every graph is checked before TensorFlow sees it (see ``graph_safety`` and
    docs/serialization.md).  ``trusted=True`` skips only the list of allowed ops, for bytes
    from this process or its own workers; never pass it for a file from elsewhere.
    """
    header, payload = _unpack(data)
    try:
        functions = _Functions(header["functions"], payload, trusted)
        if "form" in header:
            pieces = header["pieces"]
            for piece in pieces.values() if isinstance(pieces, dict) else ():
                _check_ir_shape(piece["ir"] if isinstance(piece, dict) else None)
            result = _decode_form(header, functions)
        else:
            _check_ir_shape(header["ir"])
            result = _decode_computation(header, functions)
        functions.check_all_used()
        return result
    except SerializationError:
        raise
    except Exception as e:  # noqa: BLE001 -- malformed content must not leak internal errors
        raise SerializationError(f"corrupted fedcore file: {type(e).__name__}: {e}") from None

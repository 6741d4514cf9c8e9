"""Structure-aware mutants of fedcore files, with every checksum recomputed (for test_serialization_fuzz).

``mutants(directory, count, seed)`` returns ``(name, description, bytes)`` triples.  Each
mutant applies one to three mutations to a template (legitimate computations, and the
attack files of ``serialization_attacks``, whose paths lie under ``directory``):
graph mutations (a node's op, attrs, dtypes, shapes, constants, inputs, function
references, the library's functions), header mutations (function entries, fields,
deep JSON) and IR mutations (node kinds, types, references, subtrees).
"""

from __future__ import annotations

import collections
import copy
import json
import random
from typing import Any, Callable, Dict, List, Tuple

import tensorflow as tf

import fedcore
from fedcore.compiler import graph_safety, serialization
from tests.compiler import serialization_attacks as attacks

_DANGEROUS_OPS = [
    "WriteFile", "ReadFile", "MatchingFiles", "PrintV2", "Print", "SaveV2", "RestoreV2", "ImmutableConst", "VarHandleOp",
    "ReadVariableOp", "TFRecordDataset", "RandomUniform", "PyFunc", "EagerPyFunc", "Timestamp", "NoSuchOp", "",
]
_TYPES = [
    "float32", "int32", "bool", "string", "float64", "int64", "float32[2]", "float32[?]", "int32[3,4]", "<float32,int32>",
    "<a=float32,b=int32>", "{float32}@CLIENTS", "float32@SERVER", "int32*", "(float32 -> float32)", "( -> int32)",
    "<<<<float32>>>>", "float32[-1]", "nonsense<<", "",
]
_DTYPES = [1, 2, 3, 7, 9, 10, 14, 19, 20, 21, 0, 101, 117, 999, -1]
_IR_KINDS = ["Reference", "Selection", "Struct", "Call", "Lambda", "Block", "Intrinsic", "Literal", "Placement", "Data",
             "TensorFlowComputation", "Nonsense"]
_JSON_VALUES: List[Any] = [None, 0, -1, 10**30, 1.5, "x", "", [], {}, [None], {"k": "Nonsense"}, True]


def templates(directory: str) -> Dict[str, bytes]:
    """The files mutants are made from."""

    @fedcore.tf_computation(fedcore.TensorType(tf.float32), fedcore.TensorType(tf.float32))
    def scaled_add(a, b):
        return collections.OrderedDict(total=a + b, scaled=2.0 * a)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32), fedcore.type_at_server(tf.float32))
    def fed(xs, s):
        return fedcore.federated_sum(fedcore.federated_map(scaled_add, fedcore.federated_zip([xs, fedcore.federated_broadcast(s)])))

    @fedcore.tf_computation(tf.float32)
    def with_dataset(x):
        ds = tf.data.Dataset.range(3).map(lambda i: tf.cast(i, tf.float32))
        return ds.reduce(x, lambda acc, v: acc + v)

    return {
        "plain": attacks.plain(),
        "calls": attacks.calls_a_function(),
        "federated": serialization.serialize(fed),
        "dataset": serialization.serialize(with_dataset),
        "writes": attacks.writes_a_file(directory),
        "reads": attacks.reads_a_file(directory),
        "lists": attacks.lists_files(directory),
        "prints": attacks.prints(directory),
    }


# --------------------------------------------------------------------------
# Graph mutations: each takes (rng, graph_def) and returns a description.


def _all_nodes(graph_def: Any) -> List[Any]:
    return list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]


def _function_names(graph_def: Any) -> List[str]:
    return [f.signature.name for f in graph_def.library.function]


def _mutate_op(rng: random.Random, graph_def: Any) -> str:
    nodes = _all_nodes(graph_def)
    node = rng.choice(nodes)
    pool = _DANGEROUS_OPS + _function_names(graph_def) + rng.sample(sorted(graph_safety.ALLOWED_OPS), 5)
    node.op = rng.choice(pool)
    return f"op of {node.name} -> {node.op!r}"


def _mutate_attr(rng: random.Random, graph_def: Any) -> str:
    nodes = [n for n in _all_nodes(graph_def) if n.attr]
    if not nodes:
        return "no attrs"
    node = rng.choice(nodes)
    name = rng.choice(sorted(node.attr))
    value = node.attr[name]
    field = value.WhichOneof("value")
    choice = rng.randrange(6)
    if choice == 0 or field == "type":
        value.type = rng.choice(_DTYPES) if rng.random() < 0.8 else 1
        what = f"type {value.type}"
    elif field == "shape":
        value.shape.dim.add().size = rng.choice([-5, -1, 0, 3, 1 << 40])
        what = "shape dim"
    elif field == "func":
        value.func.name = rng.choice(_function_names(graph_def) + ["nope", ""])
        what = f"func {value.func.name!r}"
    elif field == "tensor":
        tensor = value.tensor
        sub = rng.randrange(4)
        if sub == 0:
            tensor.dtype = rng.choice(_DTYPES)
        elif sub == 1:
            tensor.tensor_shape.dim.add().size = rng.choice([-1, 0, 2, 7, 1 << 33])
        elif sub == 2:
            tensor.tensor_content = tensor.tensor_content[: rng.randrange(len(tensor.tensor_content) + 1)] + b"\x01" * rng.randrange(3)
        else:
            tensor.tensor_shape.unknown_rank = True
        what = f"tensor change {sub}"
    elif field == "list":
        sub = rng.randrange(3)
        if sub == 0:
            value.list.Clear()
        elif sub == 1:
            value.list.type.append(rng.choice(_DTYPES))
        else:
            value.list.func.add().name = rng.choice(_function_names(graph_def) + ["nope"])
        what = f"list change {sub}"
    elif choice == 1:
        value.Clear()
        value.i = rng.choice([-1, 0, 1 << 40])
        what = "to int"
    elif choice == 2:
        del node.attr[name]
        what = "deleted"
    else:
        value.Clear()
        value.s = rng.choice([b"", b"file:///etc/passwd", b"\xff" * 4])
        what = "to string"
    return f"attr {name} of {node.name}: {what}"


def _mutate_input(rng: random.Random, graph_def: Any) -> str:
    nodes = [n for n in _all_nodes(graph_def) if n.input]
    if not nodes:
        return "no inputs"
    node = rng.choice(nodes)
    i = rng.randrange(len(node.input))
    others = [n.name for n in _all_nodes(graph_def)]
    node.input[i] = rng.choice(others + [f"{rng.choice(others)}:7", "nonexistent", "^" + rng.choice(others)])
    return f"input {i} of {node.name} -> {node.input[i]!r}"


def _mutate_delete(rng: random.Random, graph_def: Any) -> str:
    functions = list(graph_def.library.function)
    if functions and rng.random() < 0.3:
        victim = rng.randrange(len(functions))
        name = functions[victim].signature.name
        del graph_def.library.function[victim]
        return f"deleted function {name}"
    container = graph_def.node if not functions or rng.random() < 0.5 else rng.choice(functions).node_def
    if not len(container):
        return "nothing to delete"
    victim = rng.randrange(len(container))
    name = container[victim].name
    del container[victim]
    return f"deleted node {name}"


def _mutate_function(rng: random.Random, graph_def: Any) -> str:
    functions = list(graph_def.library.function)
    if not functions:
        graph_def.library.function.add().signature.name = rng.choice(["WriteFile", "f", "Identity"])
        return "added an empty function"
    f = rng.choice(functions)
    sub = rng.randrange(4)
    if sub == 0:
        f.signature.name = rng.choice(_function_names(graph_def) + ["AddV2", "renamed", ""])
        return f"renamed a function to {f.signature.name!r}"
    if sub == 1 and f.signature.input_arg:
        f.signature.input_arg[0].type = rng.choice(_DTYPES)
        return "changed an argument's dtype"
    if sub == 2:
        call = f.node_def.add()
        call.name = "self_call"
        call.op = f.signature.name
        if f.signature.input_arg:
            call.input.append(f.signature.input_arg[0].name)
        return "added a self call"
    g = graph_def.library.gradient.add()
    g.function_name, g.gradient_func = f.signature.name, rng.choice(_function_names(graph_def) + ["nope"])
    return "added a gradient entry"


_GRAPH_MUTATIONS = [_mutate_op, _mutate_attr, _mutate_attr, _mutate_input, _mutate_delete, _mutate_function]


# --------------------------------------------------------------------------
# Header and IR mutations: each takes (rng, header) and returns a description.


def _ir_nodes(header: Dict[str, Any]) -> List[Dict[str, Any]]:
    pieces = header.get("pieces")
    roots = [header.get("ir"), *(p.get("ir") for p in pieces.values() if isinstance(p, dict))] if isinstance(pieces, dict) else [header.get("ir")]
    found, stack = [], list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("k"), str):
                found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _mutate_ir(rng: random.Random, header: Dict[str, Any]) -> str:
    nodes = _ir_nodes(header)
    if not nodes:
        return "no IR nodes"
    node = rng.choice(nodes)
    sub = rng.randrange(7)
    if sub == 0:
        node["k"] = rng.choice(_IR_KINDS)
        return f"IR kind -> {node['k']}"
    if sub == 1:
        key = next((k for k in ("type", "parameter_type") if k in node), None)
        if key:
            node[key] = {"t": rng.choice(_TYPES)}
            return f"IR {key} -> {node[key]}"
    if sub == 2 and "name" in node:
        node["name"] = rng.choice(["x", "nope", "xs", "s", None, 3])
        return f"IR name -> {node['name']!r}"
    if sub == 3:
        other = copy.deepcopy(rng.choice(nodes))
        node.clear()
        node.update(other)
        return "IR subtree replaced by another"
    if sub == 4 and node["k"] == "TensorFlowComputation":
        node["function"] = rng.choice([-1, 1, 5, "0", None])
        return f"IR function index -> {node['function']!r}"
    if sub == 5 and node["k"] == "Intrinsic":
        node["uri"] = rng.choice(["federated_sum", "federated_mean", "nope", "federated_map"])
        return f"IR uri -> {node['uri']}"
    keys = sorted(node)
    key = rng.choice(keys)
    node[key] = rng.choice(_JSON_VALUES)
    return f"IR field {key} -> {node[key]!r}"


def _mutate_entry(rng: random.Random, header: Dict[str, Any]) -> str:
    entries = [m for m in header.get("functions") or [] if isinstance(m, dict)] if isinstance(header.get("functions"), list) else []
    if not entries:
        return "no entries"
    meta = rng.choice(entries)
    key = rng.choice(["inputs", "outputs", "parameter_type", "result_type", "name", "inputs"])
    if key in ("inputs", "outputs"):
        meta[key] = rng.choice([[], ["Identity:0"], ["leaves_0:0"], ["leaves_0:0", "leaves_0:0"], ["nope:0"], ["x"],
                                ["Const:0"], [3]])
    elif key == "name":
        meta[key] = rng.choice(["", "x" * 1000, None])
    else:
        meta[key] = rng.choice([{"t": rng.choice(_TYPES)}, None, {"t": "float32", "c": {"c": "OrderedDict", "e": []}}])
    return f"entry {key} -> {meta[key]!r}"[:200]


def _mutate_field(rng: random.Random, header: Dict[str, Any]) -> str:
    key = rng.choice(sorted(header))
    sub = rng.randrange(3)
    if sub == 0 and key not in ("format", "version"):
        del header[key]
        return f"deleted header field {key}"
    if sub == 1:
        header[key] = rng.choice(_JSON_VALUES)
        return f"header {key} -> {header[key]!r}"
    deep: Any = []
    for _ in range(rng.choice([10, 300, 700])):
        deep = [deep]
    header[key] = deep
    return f"header {key} -> deep list"


_HEADER_MUTATIONS = [_mutate_ir, _mutate_ir, _mutate_entry, _mutate_field]


def mutate(rng: random.Random, data: bytes) -> Tuple[str, bytes]:
    header, sections = attacks.split(data)
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        if sections and rng.random() < 0.6:
            index = rng.randrange(len(sections))
            graph_def = tf.compat.v1.GraphDef()
            graph_def.ParseFromString(sections[index])
            done.append(rng.choice(_GRAPH_MUTATIONS)(rng, graph_def))
            sections[index] = graph_def.SerializeToString()
        else:
            done.append(rng.choice(_HEADER_MUTATIONS)(rng, header))
    return "; ".join(done), attacks.pack(header, sections)


def mutants(directory: str, count: int, seed: int) -> List[Tuple[str, str, bytes]]:
    rng = random.Random(seed)
    bases = templates(directory)
    names = sorted(bases)
    out = []
    for i in range(count):
        base = names[i % len(names)]
        description, data = mutate(rng, bases[base])
        out.append((f"{i:04d}-{base}", description, data))
    return out

"""The bridge between fedcore types and TensorFlow values.

Converts types to TF specs, fedcore values to flat lists of tensors and
datasets and back, and infers the fedcore type of whatever a user's TF
function returns.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import keyword
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
import numpy as np
import tensorflow as tf

from fedcore.structure import Struct, build_container, items_by_names, python_items
from fedcore.types import SequenceType, StructType, TensorType, Type, to_type


# --------------------------------------------------------------------------
# Records: the element structure of datasets whose struct type has no container.


def _record_getitem(self, key):
    if isinstance(key, str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(f"no element named {key!r}; names are {[f.name for f in attrs.fields(type(self))]}") from None
    return getattr(self, attrs.fields(type(self))[key].name)


@functools.lru_cache(maxsize=None)
def record_class(names: Tuple[str, ...]) -> type:
    """An attrs class with fields ``names`` that supports ``r.x`` and ``r['x']``."""
    cls = attrs.make_class("Record", list(names), frozen=True)
    cls.__getitem__ = _record_getitem
    cls.keys = lambda self: names
    return cls


def _record_names_ok(t: StructType) -> bool:
    names = t.names()
    return bool(names) and all(n is not None and n.isidentifier() and not keyword.iskeyword(n) for n in names)


def element_container(t: StructType) -> type:
    """The Python container that a dataset element of struct type ``t`` uses."""
    if t.container is not None and t.container is not Struct:
        return t.container
    if _record_names_ok(t):
        return record_class(t.names())
    if all(n is None for n in t.names()):
        return tuple
    return collections.OrderedDict


# --------------------------------------------------------------------------
# Specs.


def tensor_spec(t: TensorType) -> tf.TensorSpec:
    shape = None if t.shape is None else list(t.shape)
    return tf.TensorSpec(shape=shape, dtype=t.tf_dtype)


def element_spec(t: Type) -> Any:
    """The nested TF spec that datasets of element type ``t`` have."""
    match t:
        case TensorType():
            return tensor_spec(t)
        case StructType():
            container = element_container(t)
            return build_container(container, [(n, element_spec(e)) for n, e in t.elements])
        case SequenceType(element=e):
            return tf.data.DatasetSpec(element_spec(e))
    raise TypeError(f"type {t} cannot be the element of a TensorFlow dataset")


def flat_specs(t: Optional[Type]) -> List[Any]:
    """One TensorSpec or DatasetSpec per leaf of ``t``, in fedcore's leaf order."""
    if t is None:
        return []
    match t:
        case TensorType():
            return [tensor_spec(t)]
        case SequenceType(element=e):
            return [tf.data.DatasetSpec(element_spec(e))]
        case StructType():
            return [spec for e in t for spec in flat_specs(e)]
    raise TypeError(f"a TensorFlow computation cannot take or return a value of type {t}")


# --------------------------------------------------------------------------
# Values <-> leaves.


def leaf_types(t: Type) -> List[Type]:
    """The types of ``t``'s leaves (tensors and sequences), in fedcore's leaf order."""
    if isinstance(t, StructType):
        return [leaf for e in t for leaf in leaf_types(e)]
    return [t]


def flatten(value: Any, t: Optional[Type]) -> List[Any]:
    """Leaves of an internal value (Struct for structs) in fedcore's leaf order."""
    if t is None:
        return []
    if isinstance(t, StructType):
        return [leaf for v, e in zip(value, t) for leaf in flatten(v, e)]
    return [value]


# Plain Python called from traced TF code: AutoGraph's conversion of each recursive call
# would cost dozens of stack frames per level of a deeply nested structure.
@tf.autograph.experimental.do_not_convert
def unflatten(leaves: List[Any], t: Optional[Type], leaf_fn=lambda x, _: x) -> Any:
    """Rebuilds an internal value (Struct for structs) of type ``t`` from leaves."""
    it = iter(leaves)

    def build(t):
        if isinstance(t, StructType):
            return Struct([(n, build(e)) for n, e in t.elements])
        return leaf_fn(next(it), t)

    return None if t is None else build(t)


def _to_containers(value: Any, t: Type, container_of) -> Any:
    if isinstance(t, StructType):
        items = [(n, _to_containers(v, e, container_of)) for (n, e), v in zip(t.elements, value)]
        return build_container(container_of(t), items)
    return value


# Plain Python called from traced TF code: AutoGraph's conversion of each recursive call
# would cost dozens of stack frames per level of a deeply nested structure.
@tf.autograph.experimental.do_not_convert
def to_user_structure(value: Any, t: Type) -> Any:
    """Internal Struct values -> the user's containers (Struct when none), for TF code."""
    return _to_containers(value, t, lambda s: s.container or Struct)


def conform_dataset(ds: tf.data.Dataset, element_type: Type) -> tf.data.Dataset:
    """Maps ``ds`` so that its elements have the nested structure element_spec(element_type) expects."""
    target = element_spec(element_type)
    try:
        tf.nest.assert_same_structure(ds.element_spec, target, check_types=True)
        return ds
    except (ValueError, TypeError):
        pass

    def restructure(*args):
        element = args[0] if len(args) == 1 else args
        return _restructure(element, element_type)

    return ds.map(restructure)


def _restructure(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        items = items_by_names(value, t.names())
        if items is None or len(items) != len(t):
            raise TypeError(f"dataset element {value!r} does not match element type {t}")
        return build_container(
            element_container(t), [(n, _restructure(v, e)) for (n, e), (_, v) in zip(t.elements, items)]
        )
    return value


# --------------------------------------------------------------------------
# Inferring types of values returned by TF code.


# Plain Python called from traced TF code: AutoGraph's conversion of each recursive call
# would cost dozens of stack frames per level of a deeply nested structure.
@tf.autograph.experimental.do_not_convert
def infer_tf_result(value: Any) -> Tuple[Type, List[Any]]:
    """Returns (type, leaves) for a value returned by user TF code, inside a graph."""
    if isinstance(value, tf.data.Dataset):
        return SequenceType(to_type(value.element_spec)), [value]
    if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, np.ndarray):
        tensor = tf.convert_to_tensor(value)
        return TensorType(tensor.dtype, tensor.shape), [tensor]
    if isinstance(value, (np.ndarray, np.generic, int, float, bool, str, bytes)):
        tensor = tf.constant(value)
        return TensorType(tensor.dtype, tensor.shape), [tensor]
    items = python_items(value)
    if items is not None:
        elements, leaves = [], []
        for name, v in items:
            if name is not None and not isinstance(name, str):
                raise TypeError(f"dict keys returned from a TensorFlow computation must be strings, got {name!r}")
            et, el = infer_tf_result(v)
            elements.append((name, et))
            leaves.extend(el)
        container = type(value) if not isinstance(value, Struct) else None
        return StructType(elements, container=container), leaves
    raise TypeError(
        f"a TensorFlow computation returned {value!r} of Python type {type(value).__name__}; expected "
        "tensors, datasets, or lists, tuples, dicts, namedtuples or attrs instances of them"
    )



def to_dataset_structure(value: Any, t: Type) -> Any:
    """Internal Struct values -> the containers that dataset elements of type ``t`` use."""
    return _to_containers(value, t, element_container)


def from_dataset_structure(value: Any, t: Type) -> Any:
    """Dataset element containers -> internal Struct values."""
    if isinstance(t, StructType):
        items = items_by_names(value, t.names())
        return Struct([(n, from_dataset_structure(v, e)) for (n, e), (_, v) in zip(t.elements, items)])
    return value


# --------------------------------------------------------------------------
# Content fingerprints of TF graphs.

# Node attributes that hold a per-process counter rather than content: gradient
# registrations, and the debug names of tf.data ops (``metadata``, e.g. "MapDataset:7").
_COUNTER_ATTRS = ("_gradient_op_type", "metadata")
_FINGERPRINT_VERSION = b"fedcore.tf-function.v1\0"


def _renamer(names: Dict[str, str]):
    """Rewrites a tensor or input reference (``name``, ``name:port``, ``^name``) by node name."""

    def rename(ref: str) -> str:
        control = ref.startswith("^")
        base, sep, rest = ref[1:].partition(":") if control else ref.partition(":")
        return ("^" if control else "") + names.get(base, base) + sep + rest

    return rename


def _rename_nodes(nodes: Any) -> Dict[str, str]:
    """Names each node by its position (``n0``, ``n1``, ...) and rewrites the inputs and colocations."""
    names = {node.name: f"n{i}" for i, node in enumerate(nodes)}
    rename = _renamer(names)
    for node in nodes:
        node.name = names[node.name]
        inputs = [rename(i) for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        if "_class" in node.attr:
            values = [b"loc:@" + names.get(v[5:].decode(), v[5:].decode()).encode() if v.startswith(b"loc:@") else v
                      for v in node.attr["_class"].list.s]
            del node.attr["_class"].list.s[:]
            node.attr["_class"].list.s.extend(values)
    return names


def canonical_graph_parts(graph_def: Any, inputs: Sequence[str] = (), outputs: Sequence[str] = ()
                          ) -> Tuple[bytes, List[str], List[str]]:
    """A GraphDef's bytes (and its input and output tensor names) with what depends on the tracing process taken out.

    TensorFlow names the functions of a graph's library with a process-wide
    counter (``__inference_f_123``), and libraries such as Keras name their
    ops with one (``dense_1/MatMul``).  Here every node is named by its
    position, each reference to a library function is replaced by the SHA-256
    of that function's own canonical bytes, the library itself is dropped, and
    counter-valued attributes and the names of resource handles are cleared.  Serialization is deterministic (map
    entries sorted), so two traces of the same code give the same bytes.
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    digests: Dict[str, str] = {}

    def function_digest(name: str) -> str:
        if name not in library:
            return name
        if name not in digests:
            digests[name] = name  # a reference back to a function being hashed keeps its name
            fdef = type(library[name])()
            fdef.CopyFrom(library[name])
            fdef.signature.name = ""
            for node in fdef.node_def:
                rewrite_node(node)
            names = _rename_nodes(fdef.node_def)
            rename = _renamer(names)
            for key in list(fdef.ret):
                fdef.ret[key] = rename(fdef.ret[key])
            for key in list(fdef.control_ret):
                fdef.control_ret[key] = names.get(fdef.control_ret[key], fdef.control_ret[key])
            for value in fdef.attr.values():
                rewrite_attr(value)
            digests[name] = "fn:" + hashlib.sha256(fdef.SerializeToString(deterministic=True)).hexdigest()
        return digests[name]

    def rewrite_attr(value: Any) -> None:
        if value.HasField("tensor"):
            for handle in value.tensor.resource_handle_val:  # e.g. a shuffle's SeedGenerator_12
                handle.name = ""
        if value.HasField("func"):
            value.func.name = function_digest(value.func.name)
            for inner in value.func.attr.values():
                rewrite_attr(inner)
        for fn in value.list.func:
            fn.name = function_digest(fn.name)
            for inner in fn.attr.values():
                rewrite_attr(inner)

    def rewrite_node(node: Any) -> None:
        node.op = function_digest(node.op)
        node.ClearField("experimental_debug_info")
        for key in _COUNTER_ATTRS:
            if key in node.attr:
                del node.attr[key]
        for value in node.attr.values():
            rewrite_attr(value)

    graph = type(graph_def)()
    graph.CopyFrom(graph_def)
    graph.ClearField("library")
    for node in graph.node:
        rewrite_node(node)
    rename = _renamer(_rename_nodes(graph.node))
    return graph.SerializeToString(deterministic=True), [rename(i) for i in inputs], [rename(o) for o in outputs]


def captured_value_bytes(captured: Sequence[Any]) -> List[bytes]:
    """The content of a function's captured inputs: each tensor's dtype, shape and bytes.

    A captured resource (a ``tf.Variable``) is mutable, so it enters by its kind only.
    """
    parts = []
    for tensor in captured:
        if tensor.dtype == tf.resource or tensor.dtype == tf.variant:
            parts.append(f"{tensor.dtype.name}".encode())
            continue
        try:
            value = np.asarray(tensor.numpy())
        except (AttributeError, NotImplementedError, TypeError, ValueError):  # a symbolic tensor: no value to read
            parts.append(f"{tensor.dtype.name}{tensor.shape}:symbolic".encode())
            continue
        data = b"\0".join(x if isinstance(x, bytes) else str(x).encode() for x in value.reshape(-1)) if value.dtype == object else value.tobytes()
        parts.append(f"{tensor.dtype.name}{list(value.shape)}:".encode() + data)
    return parts


def graph_fingerprint(graph_def: Any, parameter_type: Optional[Type], result_type: Optional[Type],
                      inputs: Sequence[str] = (), outputs: Sequence[str] = (), captured: Sequence[bytes] = ()) -> str:
    """The hex SHA-256 of a TF function: its canonical graph, input and output tensors, types and captured values."""
    graph_bytes, inputs, outputs = canonical_graph_parts(graph_def, inputs, outputs)
    h = hashlib.sha256(_FINGERPRINT_VERSION)
    parts = [part.encode("utf-8") for part in (str(parameter_type), str(result_type), "\0".join(inputs), "\0".join(outputs))]
    for data in parts + list(captured) + [graph_bytes]:
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


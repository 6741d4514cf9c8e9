"""What travels between the driver and the workers, besides the plan (``plan``).

Values: ``fedcore.Struct`` does not pickle, so structs travel as ``WStruct``;
client datasets travel as references the worker resolves (``ClientDataRef``
for a dataset a worker builds from its client data factory,
``ShippedDataRef`` for one sent once and cached), and a shipped dataset's
content as ``DatasetGraph`` or ``DatasetElements``.  Functions travel as
``FunctionRef``: the SHA-256 of their ``fedcore.serialize`` bytes (sent once
per worker) and the driver values they capture.  One stage is one
``Request`` to a worker and one ``Reply`` back (a stage with secure sums adds
a second round: the relayed public keys out, a ``Reply`` of masked sums back).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import attrs
import tensorflow as tf

from fedcore.runtime.datasets import dataset_elements
from fedcore.runtime.executor import ExecutionError
from fedcore.structure import Struct
from fedcore.types import to_type


class WStruct:
    """A Struct on the wire."""

    __slots__ = ("names", "values")

    def __init__(self, names, values):
        self.names, self.values = names, values

    def __getstate__(self):
        return (self.names, self.values)

    def __setstate__(self, state):
        self.names, self.values = state


@attrs.frozen
class ClientDataRef:
    """A client's dataset, built on the worker by the client data factory ``source`` (a token)."""

    source: str
    client_id: str

    def resolve(self, worker) -> tf.data.Dataset:
        return worker.sources[self.source].create_tf_dataset_for_client(self.client_id)


@attrs.frozen
class ShippedDataRef:
    """A dataset sent to the worker once (``Request.datasets``) and cached there by ``token``."""

    token: str

    def resolve(self, worker) -> tf.data.Dataset:
        return worker.datasets[self.token]


@attrs.frozen
class DatasetGraph:
    """A shipped dataset as its serialized ``tf.data`` graph."""

    graph: bytes
    spec: Any

    def load(self, worker) -> tf.data.Dataset:
        variant = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(self.graph))
        return tf.data.experimental.from_variant(variant, structure=self.spec)


@attrs.frozen
class DatasetElements:
    """A shipped dataset as its elements, read on the driver (a canonical sequence)."""

    elements: Any

    def load(self, worker) -> Any:
        return from_wire(self.elements)


DataRef = (ClientDataRef, ShippedDataRef)


@attrs.frozen
class FunctionRef:
    """A shipped function: its SHA-256 and the values it captures (``env``, when ``has_env``).

    On the driver ``data`` holds its serialized bytes and ``env`` canonical
    values; as sent, ``data`` is None (the bytes go once per worker, in
    ``Request.functions``) and ``env`` is in wire form.
    """

    sha: str
    env: Any
    has_env: bool
    data: Optional[bytes] = attrs.field(default=None, repr=False)


def to_wire(value: Any, dataset_ref: Optional[Callable[[Any], Any]] = None) -> Any:
    """A canonical value (or partial aggregate: lists, tuples) in a form that pickles."""
    if isinstance(value, Struct):
        return WStruct(tuple(value.names()), [to_wire(v, dataset_ref) for v in value])
    if isinstance(value, list):
        return [to_wire(v, dataset_ref) for v in value]
    if isinstance(value, tuple):
        return tuple(to_wire(v, dataset_ref) for v in value)
    if isinstance(value, tf.data.Dataset):
        if dataset_ref is None:
            raise ExecutionError("a dataset cannot be sent to a Ray worker here")
        return dataset_ref(value)
    if isinstance(value, tf.Tensor):
        return value.numpy()
    return value


def from_wire(value: Any, resolve: Optional[Callable[[Any], Any]] = None) -> Any:
    """The canonical value of ``to_wire``'s result; ``resolve`` turns dataset references into datasets."""
    if isinstance(value, WStruct):
        return Struct(zip(value.names, [from_wire(v, resolve) for v in value.values]))
    if isinstance(value, list):
        return [from_wire(v, resolve) for v in value]
    if isinstance(value, tuple):
        return tuple(from_wire(v, resolve) for v in value)
    if isinstance(value, DataRef):
        if resolve is None:
            raise ExecutionError("a dataset reference arrived where no dataset can be resolved")
        return resolve(value)
    return value


def datasets_to_lists(value: Any) -> Any:
    """Results leaving a worker: datasets become lists of canonical elements."""
    if isinstance(value, Struct):
        return Struct([(n, datasets_to_lists(v)) for n, v in value.items()])
    if isinstance(value, list):
        return [datasets_to_lists(v) for v in value]
    if isinstance(value, tf.data.Dataset):
        return dataset_elements(value, to_type(value.element_spec))
    return value


@attrs.frozen
class Request:
    """One stage of client work for one worker: its clients, the plan restricted to them, and what
    the worker does not hold yet (function bytes by SHA, client data factories and datasets by token)."""

    clients: List[int]
    nodes: List[Any]    # plan.Node, inputs before the nodes that use them
    outputs: List[Any]  # plan outputs (Values, MonoidPartial, ...)
    functions: Dict[str, bytes] = attrs.field(factory=dict)
    sources: Dict[str, bytes] = attrs.field(factory=dict)
    datasets: Dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Reply:
    """A worker's answer: its outputs (wire form) or the error its client work raised, and its seconds."""

    outputs: Optional[List[Any]]
    error: Optional[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


__all__ = [
    "ClientDataRef", "DataRef", "DatasetElements", "DatasetGraph", "FunctionRef", "Reply", "Request",
    "ShippedDataRef", "WStruct", "datasets_to_lists", "from_wire", "to_wire",
]

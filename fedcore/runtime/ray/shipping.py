"""What an executor ships to its workers: functions, client data factories, datasets.

Functions are shipped as data: a driver function value is closed over what it
captures (``close``: captured functions inlined, captured values made a
parameter ``env``), serialized with ``fedcore.serialize`` and named by the
SHA-256 of its bytes, which each worker receives once.  Client datasets
travel as references: to a dataset the worker builds from the executor's
client data factory, or to one sent once as its ``tf.data`` graph (or, for a
pipeline that calls Python, its elements read on the driver).
"""

from __future__ import annotations

import hashlib
import sys
import uuid
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.computation import Computation
from fedcore.compiler.serialization import serialize
from fedcore.compiler.transformations import free_names, substitute
from fedcore.runtime.datasets import dataset_elements
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray import plan
from fedcore.runtime.ray.driver import Closure
from fedcore.runtime.ray.lazy import force
from fedcore.runtime.ray.worker import is_client_data
from fedcore.runtime.ray.wire import (
    ClientDataRef,
    DatasetElements,
    DatasetGraph,
    FunctionRef,
    ShippedDataRef,
    to_wire,
)
from fedcore.structure import Struct
from fedcore.types import StructType, Type, to_type

_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


class Shipping:
    """One executor's shipped things, each prepared once: closed functions, factories, dataset refs."""

    def __init__(self, client_data: Optional[Callable[[], Any]]):
        self.client_data = client_data
        self._driver_data = None
        self._sources: Dict[Any, Tuple[str, bytes]] = {}  # preprocess -> (token, pickled factory)
        self._blobs: Dict[str, bytes] = {}
        self._refs: "weakref.WeakKeyDictionary[tf.data.Dataset, Any]" = weakref.WeakKeyDictionary()
        # Payloads of datasets sent to workers, held only as long as the datasets live.
        self._payloads: "weakref.WeakKeyDictionary[tf.data.Dataset, Any]" = weakref.WeakKeyDictionary()
        self._closed: "weakref.WeakKeyDictionary[bb.BuildingBlock, Tuple[str, bytes]]" = weakref.WeakKeyDictionary()

    # -- client data -------------------------------------------------------------

    def federated_data(self, client_ids: Sequence[str], preprocess: Optional[Callable] = None) -> List[tf.data.Dataset]:
        """The datasets of ``client_ids``, each known to the workers by (factory, client id)."""
        if self.client_data is None:
            raise ExecutionError("federated_data needs RayExecutor(client_data=factory)")
        if self._driver_data is None:
            data = self.client_data()
            if not is_client_data(data):
                raise TypeError(f"the client_data factory returned {type(data).__name__}, not a ClientData")
            self._driver_data = data
        source = self._sources.get(preprocess)
        if source is None:
            from ray import cloudpickle  # documented by Ray for pickling what plain pickle cannot

            for fn in (self.client_data, preprocess):
                _by_value_if_unimportable(fn, cloudpickle)
            blob = cloudpickle.dumps((self.client_data, preprocess))
            source = self._sources[preprocess] = (hashlib.sha256(blob).hexdigest(), blob)
            self._blobs[source[0]] = blob
        datasets = _client_datasets(self._driver_data, client_ids, preprocess)
        for cid, ds in zip(client_ids, datasets):
            self._refs[ds] = ClientDataRef(source[0], cid)
        return datasets

    def dataset_ref(self, ds: tf.data.Dataset) -> Any:
        ref = self._refs.get(ds)
        if ref is None:
            payload = dataset_payload(ds)
            # A graph is named by its content; elements by a fresh name (never reused, unlike id()).
            token = hashlib.sha256(payload.graph).hexdigest() if isinstance(payload, DatasetGraph) else uuid.uuid4().hex
            self._payloads[ds] = payload
            ref = self._refs[ds] = ShippedDataRef(token)
        return ref

    # -- functions -----------------------------------------------------------------

    def ship(self, fn: Any) -> FunctionRef:
        """A driver function value closed over what it captures, serialized once per IR node."""
        if not isinstance(fn, Closure):
            raise ExecutionError(f"client work must be a function of the computation, got {type(fn).__name__}")
        closed, captured = close(fn.node, fn.env)
        env = Struct.unnamed(*[force(v) for _, v, _ in captured]) if captured else None
        cacheable = not _captures_closures(fn.node, fn.env)
        cached = self._closed.get(fn.node) if cacheable else None
        if cached is None:
            data = serialize(Computation(closed, "client_work"), trusted=True)
            cached = (hashlib.sha256(data).hexdigest(), data)
            if cacheable:
                self._closed[fn.node] = cached
        return FunctionRef(cached[0], env, bool(captured), cached[1])

    def shipment(self, holds: set, clients: List[int]) -> "Shipment":
        return Shipment(self, holds, clients)


class Shipment:
    """What one request to one worker carries beside its plan: the things that worker lacks.

    ``holds`` is what the worker already has; it is updated as things are added
    (a request that is not delivered drops its worker anyway).
    """

    def __init__(self, shipping: Shipping, holds: set, clients: List[int]):
        self.shipping, self.holds, self.clients = shipping, holds, clients
        self.functions: Dict[str, bytes] = {}
        self.sources: Dict[str, bytes] = {}
        self.datasets: Dict[str, Any] = {}

    def value(self, value: Any) -> Any:
        """``value`` in wire form, its datasets as references (sent along where the worker lacks them)."""
        return to_wire(value, self._dataset)

    def function(self, fn: FunctionRef) -> FunctionRef:
        if ("fn", fn.sha) not in self.holds:
            self.functions[fn.sha] = fn.data
            self.holds.add(("fn", fn.sha))
        return FunctionRef(fn.sha, to_wire(fn.env), fn.has_env)

    def _dataset(self, ds: tf.data.Dataset) -> Any:
        ref = self.shipping.dataset_ref(ds)
        if isinstance(ref, ClientDataRef) and ("src", ref.source) not in self.holds:
            self.sources[ref.source] = self.shipping._blobs[ref.source]
            self.holds.add(("src", ref.source))
        elif isinstance(ref, ShippedDataRef) and ("ds", ref.token) not in self.holds:
            self.datasets[ref.token] = self.shipping._payloads[ds]
            self.holds.add(("ds", ref.token))
        return ref


def _client_datasets(data: Any, client_ids: Any, preprocess: Optional[Callable]) -> List[tf.data.Dataset]:
    """``fedcore.simulation.make_federated_data(data, client_ids, preprocess)``, which the runtime
    layer cannot import: the clients' datasets, in order, memoized by ``data``."""
    if is_client_data(client_ids):
        ids = list(client_ids.client_ids)
    elif isinstance(client_ids, (str, bytes)):
        raise TypeError(f"client_ids must be a collection of client ids, got the single string {client_ids!r}")
    else:
        try:
            ids = list(client_ids)
        except TypeError:
            raise TypeError(f"client_ids must be a collection of client ids, got {client_ids!r}") from None
    source = data.preprocess(preprocess) if preprocess is not None else data
    return [source.create_tf_dataset_for_client(cid) for cid in ids]


def dataset_payload(ds: tf.data.Dataset) -> Any:
    """How to send a client dataset: its tf.data graph, or, when the graph calls back into Python
    (``from_generator``, ``py_function``), its elements read once on the driver."""
    try:
        graph = ds._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.WARN).numpy()
    except Exception:  # noqa: BLE001 -- not serializable: read it instead
        graph = None
    if graph is not None:
        graph_def = tf.compat.v1.GraphDef.FromString(graph)
        ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
        if not ops & _PYTHON_OPS:
            return DatasetGraph(graph, ds.element_spec)
    try:
        elements = dataset_elements(ds, to_type(ds.element_spec))
    except Exception as e:  # noqa: BLE001
        raise ExecutionError(f"a client dataset can be neither serialized nor read to send it to a Ray worker: {e}") from None
    return DatasetElements(to_wire(elements))


def _by_value_if_unimportable(fn: Any, cloudpickle) -> None:
    """Functions of modules that workers cannot import (no import spec: notebooks, exec'd pages) travel by value."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is not None and module.__name__ != "__main__" and getattr(module, "__spec__", None) is None:
        cloudpickle.register_pickle_by_value(module)


# --------------------------------------------------------------------------
# Closure conversion.


def _captures_closures(node: bb.BuildingBlock, env: Dict[str, Any]) -> bool:
    return any(isinstance(env.get(name), Closure) for name in free_names(node))


def _reference_type(node: bb.BuildingBlock, name: str) -> Type:
    for n in bb.walk(node):
        if isinstance(n, bb.Reference) and n.name == name:
            return n.type_signature
    raise ExecutionError(f"no reference to {name} in the function")


def close(node: bb.BuildingBlock, env: Dict[str, Any]) -> Tuple[bb.BuildingBlock, List[Tuple[str, Any, Type]]]:
    """``node`` with captured function values inlined and captured data made a parameter.

    Returns the closed function and the captured values (name, value, type).
    A function with captured data takes ``<env, x>`` (or ``env`` when it took nothing).
    """
    captured: List[Tuple[str, Any, Type]] = []
    body = node
    for name in sorted(free_names(node)):
        if name not in env:
            raise ExecutionError(f"client work refers to {name}, which has no value")
        value = env[name]
        if isinstance(value, Closure):
            inner, inner_captured = close(value.node, value.env)
            if inner_captured:
                raise ExecutionError("client work calling a function that captures values is not supported")
            body = substitute(body, name, inner)
        elif isinstance(value, plan.Node):
            raise ExecutionError(f"client work cannot use the client-placed value {name} inside a map")
        else:
            captured.append((name, value, _reference_type(node, name)))
    if not captured:
        return body, []
    env_type = StructType([(None, t) for _, _, t in captured])
    fn_type = body.type_signature
    param_type = env_type if fn_type.parameter is None else StructType([(None, env_type), (None, fn_type.parameter)])
    p = "__fedcore_env"
    whole = bb.Reference(p, param_type)
    env_ref = whole if fn_type.parameter is None else bb.Selection(whole, 0)
    for i, (name, _, _) in enumerate(captured):
        body = substitute(body, name, bb.Selection(env_ref, i))
    call = bb.Call(body, None) if fn_type.parameter is None else bb.Call(body, bb.Selection(whole, 1))
    return bb.Lambda(p, param_type, call), captured

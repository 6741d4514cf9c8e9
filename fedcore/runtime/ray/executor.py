"""Distributed execution on Ray: client work on worker actors, server work on the driver.

``RayExecutor`` interprets a computation on the driver.  Values placed at
SERVER (and all-equal values at CLIENTS) are ordinary values there.  A value
placed at CLIENTS is a *client node*: a lazy description of per-client work
(the argument's client values, a ``federated_map`` of a function over another
node, a zip, a selection, ``federated_eval``).  Nothing runs on the workers
until a value computed from client work is needed on the driver.  Then every
aggregation queued so far is sent at once: **one request per worker**, holding
the client program that feeds the aggregations, restricted to that worker's
clients.  Each worker runs its clients' maps with a local
``TensorFlowExecutor`` (compiled once, kept across rounds), computes partial
aggregates and returns them; the driver merges the partials exactly:

* sums as sums (floats in float64, as the reference does);
* means as (sum, count), weighted means as (weighted sum, total weight);
* min/max leaf-wise; ``federated_aggregate`` accumulators with ``merge``;
* ``federated_secure_sum`` runs ``fedcore.runtime.secure_aggregation``: each client's value is
  bound-checked and masked on its worker, and the driver sees only masked partial sums.

A ``federated_sum`` or ``federated_mean`` of a ``federated_map``
(``fedcore.compiler.transformations.fused_map_reduce``) runs on a worker as one
fused TF program, so per-client results are never materialized.

Functions are shipped as data: ``fedcore.serialize`` bytes, cached on each
worker by SHA-256.  Values they capture from the driver travel as an extra
parameter.  Client datasets are built on the worker from a ``ClientData``
factory when the executor has one (``RayExecutor(client_data=...)`` and
``executor.federated_data(...)``); other datasets are shipped once, as their
serialized ``tf.data`` graph (or, for pipelines calling Python, their elements
read on the driver), and cached.  Clients are assigned to workers
greedily by dataset size (largest first, to the least loaded worker).

Faults: a worker that dies or does not answer within ``timeout_s`` is dropped
and the whole stage is run again on the remaining workers, up to
``max_retries`` times; after that, or when no worker is left, the call raises
``WorkerFailure`` (an ``ExecutionError``).  Client work is pure, so a retried
stage gives the same result; partial results of a failed attempt are never used.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.computation import Computation
from fedcore.compiler.intrinsics import INTRINSICS, register_rule
from fedcore.compiler.serialization import deserialize, serialize
from fedcore.compiler import tf_bridge
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.compiler.transformations import free_names, fused_map_reduce, run_pipeline, substitute
from fedcore.runtime import reference, secure_aggregation
from fedcore.runtime.datasets import dataset_elements
from fedcore.runtime.executor import ExecutionError
from fedcore.structure import Struct
from fedcore.types import CLIENTS, FederatedType, FunctionType, StructType, Type, to_type

NAME = "ray"
_log = logging.getLogger(__name__)

__all__ = ["RayExecutor", "WorkerFailure", "WorkerPool"]


class WorkerFailure(ExecutionError):
    """Workers died or stopped answering, and the retry policy gave up."""


def _import_ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("RayExecutor needs Ray: pip install 'fedcore[ray]'") from None
    return ray


# --------------------------------------------------------------------------
# Values on the wire: fedcore.Struct is immutable and not picklable, datasets
# are replaced by references the worker resolves.


class _WStruct:
    """A Struct on the wire."""

    __slots__ = ("names", "values")

    def __init__(self, names, values):
        self.names, self.values = names, values

    def __getstate__(self):
        return (self.names, self.values)

    def __setstate__(self, state):
        self.names, self.values = state


class _DataRef:
    """A client dataset on the wire: ``kind`` is 'factory' (source, client id) or 'shipped' (token)."""

    __slots__ = ("kind", "key", "client_id")

    def __init__(self, kind, key, client_id=None):
        self.kind, self.key, self.client_id = kind, key, client_id

    def __getstate__(self):
        return (self.kind, self.key, self.client_id)

    def __setstate__(self, state):
        self.kind, self.key, self.client_id = state


def _to_wire(value: Any, dataset_ref: Optional[Callable[[Any], Any]] = None) -> Any:
    if isinstance(value, Struct):
        return _WStruct(tuple(value.names()), [_to_wire(v, dataset_ref) for v in value])
    if isinstance(value, list):
        return [_to_wire(v, dataset_ref) for v in value]
    if isinstance(value, tuple):  # partial aggregates such as (sum, count); canonical values have no tuples
        return tuple(_to_wire(v, dataset_ref) for v in value)
    if isinstance(value, tf.data.Dataset):
        if dataset_ref is None:
            raise ExecutionError("a dataset cannot be sent to a Ray worker here")
        return dataset_ref(value)
    if isinstance(value, tf.Tensor):
        return value.numpy()
    return value


def _from_wire(value: Any, resolve: Optional[Callable[[_DataRef], Any]] = None) -> Any:
    if isinstance(value, _WStruct):
        return Struct(zip(value.names, [_from_wire(v, resolve) for v in value.values]))
    if isinstance(value, list):
        return [_from_wire(v, resolve) for v in value]
    if isinstance(value, tuple):
        return tuple(_from_wire(v, resolve) for v in value)
    if isinstance(value, _DataRef):
        return resolve(value)
    return value


def _datasets_to_lists(value: Any) -> Any:
    """Results leaving a worker: datasets become lists of canonical elements."""
    if isinstance(value, Struct):
        return Struct([(n, _datasets_to_lists(v)) for n, v in value.items()])
    if isinstance(value, list):
        return [_datasets_to_lists(v) for v in value]
    if isinstance(value, tf.data.Dataset):
        return dataset_elements(value, to_type(value.element_spec))
    return value


# --------------------------------------------------------------------------
# Leaf-wise numpy helpers for partial aggregates (no type needed: Structs and arrays).


def _leaves(values: List[Any], fn: Callable[[np.ndarray], Any]) -> Any:
    first = values[0]
    if isinstance(first, Struct):
        return Struct([(n, _leaves([v[i] for v in values], fn)) for i, n in enumerate(first.names())])
    return fn(np.stack([np.asarray(v) for v in values]))


def _wide_sum(stacked: np.ndarray) -> np.ndarray:
    return np.sum(stacked, axis=0, dtype=np.float64 if stacked.dtype.kind == "f" else stacked.dtype)


def _cast_to(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _cast_to(value[i], e)) for i, (n, e) in enumerate(t.elements)])
    return np.asarray(value).astype(t.np_dtype)


# --------------------------------------------------------------------------
# The worker actor.


class _Worker:
    """Runs its clients' share of a stage; keeps functions, programs and datasets across rounds."""

    def __init__(self, threads: int):
        # Pin TF to this worker's share of cores, so several workers run side by side.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        from fedcore.runtime.tensorflow import TensorFlowExecutor

        self._tf = TensorFlowExecutor()
        self._functions: Dict[str, Computation] = {}
        self._programs: Dict[Any, Computation] = {}
        self._sources: Dict[str, Any] = {}
        self._datasets: Dict[str, tf.data.Dataset] = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, request: Dict[str, Any]) -> Tuple[str, Any, float]:
        """("ok", outputs, seconds) or ("error", message, seconds): errors travel as data."""
        start = time.perf_counter()
        try:
            outputs = self._run(request)
            return ("ok", outputs, time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 -- reported to the driver, which raises ExecutionError
            return ("error", f"{type(e).__name__}: {e}", time.perf_counter() - start)

    # -- caches --------------------------------------------------------------

    def _install(self, request: Dict[str, Any]) -> None:
        for sha, data in request.get("functions", {}).items():
            if sha not in self._functions:
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ExecutionError("a shipped function does not match its SHA-256")
                self._functions[sha] = deserialize(data)
        if request.get("sources"):
            from ray import cloudpickle

            for token, blob in request["sources"].items():
                if token in self._sources:
                    continue
                factory, preprocess = cloudpickle.loads(blob)
                from fedcore.simulation import ClientData

                data = factory()
                if not isinstance(data, ClientData):
                    raise ExecutionError(f"the client_data factory returned {type(data).__name__}, not a ClientData")
                self._sources[token] = data.preprocess(preprocess) if preprocess is not None else data
        for token, (kind, payload, spec) in request.get("datasets", {}).items():
            if token in self._datasets:
                continue
            if kind == "elements":  # read on the driver: a canonical sequence, a list of elements
                self._datasets[token] = _from_wire(payload)
                continue
            variant = tf.raw_ops.DatasetFromGraph(graph_def=tf.constant(payload))
            self._datasets[token] = tf.data.experimental.from_variant(variant, structure=spec)

    def _resolve(self, ref: _DataRef) -> tf.data.Dataset:
        if ref.kind == "factory":
            return self._sources[ref.key].create_tf_dataset_for_client(ref.client_id)
        return self._datasets[ref.key]

    def _program(self, kind: str, sha: str, has_env: bool) -> Computation:
        key = (kind, sha, has_env)
        comp = self._programs.get(key)
        if comp is None:
            comp = _worker_program(kind, self._functions[sha], has_env)
            self._programs[key] = comp
        return comp

    def _execute(self, comp: Computation, argument: Any, n: int) -> Any:
        """On the local TF executor; on the reference where TF cannot lower the work."""
        try:
            return self._tf.execute(comp, argument, num_clients=n)
        except Exception:  # noqa: BLE001 -- the reference either gives the right result or the real error
            return reference.ReferenceExecutor().execute(comp, argument, num_clients=n)

    def _call(self, sha: str, env: Any, has_env: bool, arg: Any) -> Any:
        comp = self._functions[sha]
        argument = Struct.unnamed(env, arg) if has_env else arg
        return reference.ReferenceExecutor().execute(comp, argument)

    # -- one stage -----------------------------------------------------------

    def _run(self, request: Dict[str, Any]) -> List[Any]:
        self._install(request)
        clients: List[int] = request["clients"]
        n = len(clients)
        values: Dict[int, List[Any]] = {}
        for node in request["nodes"]:
            kind, nid = node[0], node[1]
            if kind == "arg":
                values[nid] = _from_wire(node[2], self._resolve)
            elif kind == "const":
                values[nid] = [_from_wire(node[2])] * n
            elif kind == "select":
                values[nid] = [v[node[2]] for v in values[node[3]]]
            elif kind == "zip":
                names, inputs = node[2], node[3]
                values[nid] = [Struct(zip(names, row)) for row in zip(*[values[i] for i in inputs])]
            elif kind == "map":
                _, _, sha, env, has_env, src = node
                values[nid] = self._map("map", sha, _from_wire(env), has_env, values[src])
            elif kind == "eval":
                _, _, sha, env, has_env = node
                env = _from_wire(env)
                comp = self._functions[sha]
                values[nid] = [reference.ReferenceExecutor().execute(comp, env if has_env else None) for _ in clients]
            else:
                raise ExecutionError(f"unknown client node kind {kind!r}")
        return [_to_wire(self._output(out, values, clients)) for out in request["outputs"]]

    def _map(self, kind: str, sha: str, env: Any, has_env: bool, members: List[Any]) -> Any:
        comp = self._program(kind, sha, has_env)
        argument = Struct([("env", env), ("x", members)]) if has_env else members
        return self._execute(comp, argument, len(members))

    def _output(self, out: Tuple, values: Dict[int, List[Any]], clients: List[int]) -> Any:
        op = out[0]
        if op == "values":
            return _datasets_to_lists(values[out[1]])
        if op == "fused":  # sum or mean of a map, in one TF program: (sum, count)
            _, sha, env, has_env, src = out
            total = self._map("fused_sum", sha, _from_wire(env), has_env, values[src])
            return (_leaves([total], lambda s: s[0].astype(np.float64) if s.dtype.kind == "f" else s[0]), len(clients))
        members = values[out[1]]
        if op in ("sum", "mean"):
            return (_leaves(members, _wide_sum), len(members))
        if op == "min":
            return _leaves(members, lambda s: np.min(s, axis=0))
        if op == "max":
            return _leaves(members, lambda s: np.max(s, axis=0))
        if op == "wmean":
            weights = np.asarray([float(np.asarray(w)) for w in values[out[2]]], np.float64)

            def weighted(stacked):
                w = weights.reshape((-1,) + (1,) * (stacked.ndim - 1))
                return np.sum(stacked.astype(np.float64) * w, axis=0)

            return (_leaves(members, weighted), float(np.sum(weights)))
        if op == "secure_sum":
            # Each client encodes and masks its own value (secure_aggregation's client side); the worker
            # adds its clients' masked vectors mod 2^bits, which leaves the sum masked until all are added.
            _, _, bounds, bits, seeds = out
            bounds = [np.asarray(b) for b in _from_wire(bounds)]
            shapes = [np.shape(leaf) for leaf in _struct_leaves(members[0])]
            masked = [
                secure_aggregation.mask(i, secure_aggregation.encode(i, _struct_leaves(v), bounds, shapes), seeds[i], bits)
                for i, v in zip(clients, members)
            ]
            return (secure_aggregation.unmask_sum(masked, bits), shapes)
        if op == "aggregate":
            _, _, zero, sha, env, has_env = out
            acc = _from_wire(zero)
            env = _from_wire(env)
            for v in members:
                acc = self._call(sha, env, has_env, Struct.unnamed(acc, v))
            return acc
        raise ExecutionError(f"unknown worker output {op!r}")


def _struct_leaves(value: Any) -> List[Any]:
    if isinstance(value, Struct):
        return [leaf for v in value for leaf in _struct_leaves(v)]
    return [value]


def _worker_program(kind: str, fn: Computation, has_env: bool) -> Computation:
    """The federated computation a worker runs for a shipped function over its clients."""
    import fedcore

    t = fn.type_signature
    if has_env:
        env_type, member_type = t.parameter[0], t.parameter[1]
        parameter = StructType([("env", fedcore.type_at_server(env_type)), ("x", fedcore.type_at_clients(member_type))])
    else:
        parameter = fedcore.type_at_clients(t.parameter)

    @fedcore.federated_computation(parameter)
    def program(arg):
        if has_env:
            data = fedcore.federated_zip([fedcore.federated_broadcast(arg.env), arg.x])
        else:
            data = arg
        mapped = fedcore.federated_map(fn, data)
        return fedcore.federated_sum(mapped) if kind == "fused_sum" else mapped

    return program


# --------------------------------------------------------------------------
# The pool of worker actors.


def _session(ray) -> str:
    """This Ray session's identity: pools of an earlier (shut down) session must not be reused."""
    node = getattr(getattr(ray._private.worker, "global_worker", None), "node", None)
    return getattr(node, "session_name", None) or ray.get_runtime_context().gcs_address


class WorkerPool:
    """Worker actors, shared by the RayExecutors that use it; remembers what each one holds."""

    _shared: Dict[Any, "WorkerPool"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, num_workers: Optional[int] = None, cpus_per_worker: float = 1.0,
                 threads_per_worker: Optional[int] = None, start_timeout_s: float = 120.0):
        ray = _import_ray()
        if not ray.is_initialized():
            raise ExecutionError("Ray is not initialized; call ray.init() or use RayExecutor(address=...)")
        if not (isinstance(cpus_per_worker, (int, float)) and cpus_per_worker > 0):
            raise ValueError(f"cpus_per_worker must be a positive number, got {cpus_per_worker!r}")
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
        if num_workers is None:
            num_workers = max(1, int(cluster_cpus // cpus_per_worker))
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
        if num_workers * cpus_per_worker > cluster_cpus + 1e-9:
            raise ValueError(
                f"{num_workers} workers of {cpus_per_worker} CPU(s) need {num_workers * cpus_per_worker:g} CPUs, "
                f"but the Ray cluster has {cluster_cpus:g}"
            )
        # CPUs of actors just killed come back after a moment: wait a little for them, never long.
        deadline = time.monotonic() + 10.0
        free_cpus = float(ray.available_resources().get("CPU", 0))
        while num_workers * cpus_per_worker > free_cpus + 1e-9 and time.monotonic() < deadline:
            time.sleep(0.2)
            free_cpus = float(ray.available_resources().get("CPU", 0))
        if num_workers * cpus_per_worker > free_cpus + 1e-9:
            raise ValueError(
                f"{num_workers} workers of {cpus_per_worker} CPU(s) need {num_workers * cpus_per_worker:g} CPUs, "
                f"but only {free_cpus:g} of the cluster's {cluster_cpus:g} are free (other actors, such as the "
                "workers of another WorkerPool, hold the rest; WorkerPool.shutdown() releases them)"
            )
        threads = threads_per_worker or max(1, int(round(cpus_per_worker)))
        remote = ray.remote(_Worker).options(
            num_cpus=cpus_per_worker, max_restarts=0, max_concurrency=1,
            runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}},
        )
        self.actors = [remote.remote(threads) for _ in range(num_workers)]
        self.pids: List[Optional[int]] = [None] * num_workers
        self.num_cpus = cpus_per_worker
        self.dispatches = 0
        # What each actor already holds: function SHAs, data sources and shipped datasets.
        self.holds: Dict[Any, set] = {a: set() for a in self.actors}
        try:
            self.pids = ray.get([a.pid.remote() for a in self.actors], timeout=start_timeout_s)
        except Exception as e:  # noqa: BLE001
            self.shutdown()
            raise WorkerFailure(f"the Ray workers did not start within {start_timeout_s:g} s: {e}") from None

    @classmethod
    def shared(cls, num_workers: Optional[int] = None, cpus_per_worker: float = 1.0) -> "WorkerPool":
        """One pool per (Ray session, configuration): executors made per call reuse its actors."""
        ray = _import_ray()
        key = (_session(ray), num_workers, cpus_per_worker)
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None or not pool.actors:
                pool = cls(num_workers, cpus_per_worker)
                cls._shared[key] = pool
            return pool

    @property
    def num_workers(self) -> int:
        return len(self.actors)

    def drop(self, actor) -> None:
        """Forgets a dead or unresponsive worker (and makes sure it is gone)."""
        ray = _import_ray()
        if actor in self.holds:
            i = self.actors.index(actor)
            del self.actors[i], self.pids[i]
            del self.holds[actor]
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 -- already gone
            pass

    def shutdown(self) -> None:
        for actor in list(self.actors):
            self.drop(actor)


# --------------------------------------------------------------------------
# Lazy values on the driver.


class _Lazy:
    """A driver value computed on demand (after the client work it depends on has run)."""

    __slots__ = ("_thunk", "_value", "_done")

    def __init__(self, thunk: Callable[[], Any]):
        self._thunk, self._done, self._value = thunk, False, None

    def force(self) -> Any:
        if not self._done:
            value = force(self._thunk())
            self._value, self._done, self._thunk = value, True, None
        return self._value


def force(value: Any) -> Any:
    """``value`` with every lazy part computed."""
    if isinstance(value, _Lazy):
        return value.force()
    if isinstance(value, Struct):
        if not _has_lazy(value):
            return value
        return Struct([(n, force(v)) for n, v in value.items()])
    if isinstance(value, list) and _has_lazy(value):
        return [force(v) for v in value]
    return value


def _has_lazy(value: Any) -> bool:
    if isinstance(value, _Lazy):
        return not value._done
    if isinstance(value, (Struct, list)):
        return any(_has_lazy(v) for v in value)
    return False


class CNode:
    """A value placed at CLIENTS (per client), evaluated on the workers."""

    _ids = itertools.count()

    def __init__(self, kind: str, inputs: Sequence["CNode"] = (), **payload):
        self.id = next(CNode._ids)
        self.kind, self.inputs, self.payload = kind, tuple(inputs), payload


class _Shipped:
    """A function closed over the driver values it captures, ready to send: SHA, bytes, env."""

    def __init__(self, sha: str, data: bytes, env: Any, has_env: bool, comp: Computation):
        self.sha, self.data, self.env, self.has_env, self.comp = sha, data, env, has_env, comp


class _Closure:
    """A function value on the driver: its IR node and the environment it was made in."""

    def __init__(self, interp: "_DriverInterpreter", node: bb.BuildingBlock, env: Dict[str, Any]):
        self.interp, self.node, self.env = interp, node, env

    def __call__(self, arg: Any = None) -> Any:
        node = self.node
        if isinstance(node, bb.TensorFlowComputation):
            if _has_lazy(arg):
                return _Lazy(lambda: reference.call_tf(node, force(arg)))
            return reference.call_tf(node, arg)
        if node.parameter_name is None:
            return self.interp.evaluate(node.result, self.env)
        return self.interp.evaluate(node.result, {**self.env, node.parameter_name: arg})


def _reference_type(node: bb.BuildingBlock, name: str) -> Type:
    for n in bb.walk(node):
        if isinstance(n, bb.Reference) and n.name == name:
            return n.type_signature
    raise ExecutionError(f"no reference to {name} in the function")


class _DriverInterpreter(reference.Interpreter):
    """The reference walker, with client values as nodes run on the workers."""

    def __init__(self, executor: "RayExecutor", num_clients: Optional[int]):
        super().__init__(num_clients, {})
        self.executor = executor
        self.pending: List[Tuple[Tuple, Dict[str, Any], Callable]] = []
        self._fetched: Dict[int, List[Any]] = {}

    # -- evaluation ------------------------------------------------------------

    def evaluate(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        match node:
            case bb.Lambda() | bb.TensorFlowComputation():
                return _Closure(self, node, env)
            case bb.Selection(source=source, index=index):
                value = self.evaluate(source, env)
                if isinstance(value, CNode):
                    return CNode("select", [value], index=index)
                if isinstance(value, _Lazy) and not value._done:
                    return _Lazy(lambda: force(value)[index])
                return value[index]
            case bb.Call(function=bb.Intrinsic(uri=uri)) if uri in ("federated_sum", "federated_mean") and (
                parts := fused_map_reduce(node)
            ):
                fn = self.evaluate(parts["fn"], env)
                clients = self.client_node(self.evaluate(parts["clients"], env), parts["clients"].type_signature)
                member = node.type_signature.member
                if uri == "federated_mean":
                    _require_float(member)
                path = _selection_path(fn)
                if path is not None:  # a selection needs no TF program: select, then sum on the workers
                    for index in path:
                        clients = CNode("select", [clients], index=index)
                    op = ("sum" if uri == "federated_sum" else "mean", clients)
                else:
                    op = ("fused", self.executor.ship(fn), clients)
                return self.queue(op, lambda parts_: _finish_sum(uri, parts_, member))
            case bb.Intrinsic(uri=uri, type_signature=t):
                rule = INTRINSICS[uri].rules.get(NAME) if uri in INTRINSICS else None
                if rule is None:
                    raise ExecutionError(f"the Ray executor has no rule for {uri}")
                if isinstance(t, FunctionType):
                    return lambda arg=None: rule(self, arg, t)
                return rule(self, None, t)
        return super().evaluate(node, env)

    def coerce(self, value: Any, source: Type, target: Optional[Type]) -> Any:
        if target is None or source == target:
            return value
        match source, target:
            case FederatedType(all_equal=True), FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                return self.client_node(value, source)
            case StructType(), StructType():
                return Struct([(n, self.coerce(v, s, t)) for (n, t), v, s in zip(target.elements, value, source)])
        return value

    def client_node(self, value: Any, t: FederatedType) -> CNode:
        """The node of a CLIENTS value; an all-equal value becomes a constant node."""
        if isinstance(value, CNode):
            return value
        if t.all_equal:
            return CNode("const", value=force(value))
        return CNode("arg", values=list(value))

    def queue(self, op: Tuple, finish: Callable[[List[Any]], Any]) -> _Lazy:
        """An aggregation whose partials the next dispatch computes; its result, lazily."""
        holder: Dict[str, Any] = {}

        def result():
            if "value" not in holder and "error" not in holder:
                self.flush()
            if "error" in holder:
                raise ExecutionError(f"the client work this value needs failed: {holder['error']}")
            return holder["value"]

        lazy = _Lazy(result)
        self.pending.append((op, holder, finish))
        return lazy

    def flush(self, fetch: Sequence[CNode] = ()) -> None:
        """Runs every queued aggregation, and fetches the values of ``fetch``: one request per worker."""
        pending, self.pending = self.pending, []
        if not pending and not fetch:
            return
        ops = [op for op, _, _ in pending] + [("values", node) for node in fetch]
        try:
            results = self.executor.dispatch(self.num_clients, ops)
        except Exception as e:
            for _, holder, _ in pending:
                holder["error"] = e
            raise
        for (op, holder, finish), parts in zip(pending, results):
            holder["value"] = finish(parts)
        for node, values in zip(fetch, results[len(pending):]):
            self._fetched[node.id] = values

    def materialize(self, node: CNode) -> List[Any]:
        if node.kind == "arg":
            return list(node.payload["values"])
        if node.kind == "const":
            return [node.payload["value"]] * self.num_clients
        if node.id not in self._fetched:
            self.flush([node])
        return self._fetched[node.id]

    def result(self, value: Any, t: Type) -> Any:
        """The final result: client values fetched together with the aggregations still queued."""
        to_fetch = {n.id: n for n in _client_nodes(value, t) if n.kind not in ("arg", "const")}
        self.flush(list(to_fetch.values()))
        return self.output(value, t)

    def output(self, value: Any, t: Type) -> Any:
        """The final result: client values fetched, lazy values forced."""
        match t:
            case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                if isinstance(value, CNode):
                    return self.materialize(value)
                return force(value)
            case StructType():
                value = force(value) if isinstance(value, _Lazy) else value
                parts = [self.output(v, e) for v, e in zip(value, t)]
                return Struct(zip(t.names(), parts))
        return force(value)


def _client_nodes(value: Any, t: Type) -> List[CNode]:
    """The client nodes in a result of type ``t``."""
    match t:
        case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
            return [value] if isinstance(value, CNode) else []
        case StructType():
            if isinstance(value, _Lazy):
                return []
            return [n for v, e in zip(value, t) for n in _client_nodes(v, e)]
    return []


def _require_float(member: Type) -> None:
    for leaf in leaf_types(member):
        if leaf.np_dtype.kind not in "fc":
            raise ExecutionError("federated_mean needs floating-point values")


def _merge_sums(parts: List[Tuple[Any, Any]]) -> Tuple[Any, Any]:
    nonempty = [p for p in parts if p is not None]
    total = _leaves([p[0] for p in nonempty], lambda s: np.sum(s, axis=0)) if nonempty else None
    return total, sum(p[1] for p in nonempty)


def _finish_sum(uri: str, parts: List[Any], member: Type) -> Any:
    total, count = _merge_sums(parts)
    if uri == "federated_sum":
        return reference.zero(member) if total is None else _cast_to(total, member)
    if count == 0:
        return reference._fill(member, lambda _: np.nan)
    return _cast_to(_leaves([total], lambda s: s[0] / count), member)


# --------------------------------------------------------------------------
# Rules of the driver interpreter.

rule = functools.partial(register_rule, NAME)


@rule("federated_value_at_server")
@rule("federated_value_at_clients")
@rule("federated_broadcast")
def _identity(interp, arg, t):
    return arg


@rule("federated_eval_at_server")
def _eval_at_server(interp, fn, t):
    return fn()


@rule("federated_eval_at_clients")
def _eval_at_clients(interp, fn, t):
    interp.num_clients  # raises a clear error when the count is unknown
    return CNode("eval", shipped=interp.executor.ship(fn))


@rule("federated_map")
def _map(interp, arg, t):
    fn, values = arg
    node = interp.client_node(values, t.parameter[1])
    path = _selection_path(fn)
    if path is not None:  # (s -> s.a.b): selected per client on the workers, no program to ship
        for index in path:
            node = CNode("select", [node], index=index)
        return node
    return CNode("map", [node], shipped=interp.executor.ship(fn))


def _selection_path(fn: Any) -> Optional[List[int]]:
    """The indices of a function that only selects from its parameter, else None."""
    node = getattr(fn, "node", None)
    if not isinstance(node, bb.Lambda) or node.parameter_name is None:
        return None
    path, body = [], node.result
    while isinstance(body, bb.Selection):
        path.append(body.index)
        body = body.source
    if not path or not (isinstance(body, bb.Reference) and body.name == node.parameter_name):
        return None
    return path[::-1]


@rule("federated_map_all_equal")
@rule("federated_apply")
def _apply(interp, arg, t):
    fn, value = arg
    return fn(value)


@rule("federated_zip_at_clients")
def _zip_at_clients(interp, arg, t):
    nodes = [interp.client_node(v, e) for v, e in zip(arg, t.parameter)]
    return CNode("zip", nodes, names=tuple(t.parameter.names()))


@rule("federated_zip_at_server")
def _zip_at_server(interp, arg, t):
    return Struct(zip(t.parameter.names(), arg))


def _on_driver(uri: str):
    """Aggregates of all-equal values need no worker: the reference's rule on the driver."""
    ref_rule = INTRINSICS[uri].rules["reference"]
    return lambda interp, arg, t: ref_rule(interp, force(arg), t)


def _aggregation(uri: str, op: str):
    on_driver = _on_driver(uri)

    def apply(interp, arg, t):
        if t.parameter.all_equal:
            return on_driver(interp, arg, t)
        member = t.result.member
        if op == "mean":
            _require_float(member)
        node = interp.client_node(arg, t.parameter)
        return interp.queue((op, node), lambda parts: _finish(op, parts, member))

    return apply


def _finish(op: str, parts: List[Any], member: Type) -> Any:
    if op in ("sum", "mean"):
        return _finish_sum("federated_" + op, parts, member)
    nonempty = [p for p in parts if p is not None]
    if not nonempty:
        return reference._fill(member, reference._highest if op == "min" else reference._lowest)
    reduce = np.min if op == "min" else np.max
    return _cast_to(_leaves(nonempty, lambda s: reduce(s, axis=0)), member)


rule("federated_sum")(_aggregation("federated_sum", "sum"))
rule("federated_mean")(_aggregation("federated_mean", "mean"))
rule("federated_min")(_aggregation("federated_min", "min"))
rule("federated_max")(_aggregation("federated_max", "max"))


@rule("federated_weighted_mean")
def _weighted_mean(interp, arg, t):
    value_type, weight_type = t.parameter
    member = t.result.member
    values = interp.client_node(arg[0], value_type)
    weights = interp.client_node(arg[1], weight_type)

    def finish(parts):
        nonempty = [p for p in parts if p is not None]
        if not nonempty:
            return reference._fill(member, lambda _: np.nan)
        total = _leaves([p[0] for p in nonempty], lambda s: np.sum(s, axis=0))
        weight = float(np.sum(np.asarray([p[1] for p in nonempty], np.float64)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return _cast_to(_leaves([total], lambda s: s[0] / weight), member)

    return interp.queue(("wmean", values, weights), finish)


@rule("federated_aggregate")
def _aggregate(interp, arg, t):
    values, zero, accumulate, merge, report = arg
    if t.parameter[0].all_equal:
        return _on_driver("federated_aggregate")(interp, arg, t)
    node = interp.client_node(values, t.parameter[0])
    zero = force(zero)

    def finish(parts):
        acc = None
        for p in parts:
            if p is not None:
                acc = p if acc is None else force(merge(Struct.unnamed(acc, p)))
        return force(report(zero if acc is None else acc))

    return interp.queue(("aggregate", node, zero, interp.executor.ship(accumulate)), finish)


@rule("federated_secure_sum")
def _secure_sum(interp, arg, t):
    values, bound = arg
    if t.parameter[0].all_equal:
        return _on_driver("federated_secure_sum")(interp, arg, t)
    member = t.result.member
    node = interp.client_node(values, t.parameter[0])
    bounds = [np.asarray(b) for b in secure_aggregation.leaf_bounds(force(bound), member)]
    dtypes = [leaf.np_dtype for leaf in leaf_types(member)]
    try:
        bits = secure_aggregation.bits_for(interp.num_clients, bounds)
    except secure_aggregation.SecureSumError as e:
        raise ExecutionError(str(e)) from None
    seeds = secure_aggregation.pairwise_seeds(interp.num_clients)  # the simulated key agreement

    def finish(parts):
        # The server side: only the workers' masked partial sums; the masks cancel in their total.
        if not parts:
            return reference.zero(member)
        try:
            total = secure_aggregation.unmask_sum([p[0] for p in parts], bits)
            return tf_bridge.unflatten(secure_aggregation.decode(total, parts[0][1], dtypes), member)
        except secure_aggregation.SecureSumError as e:
            raise ExecutionError(str(e)) from None

    return interp.queue(("secure_sum", node, bounds, bits, seeds), finish)


for _uri in ("sequence_map", "sequence_reduce", "sequence_sum", "generic_plus", "generic_zero"):
    rule(_uri)(_on_driver(_uri))


# --------------------------------------------------------------------------
# The executor.


class RayExecutor:
    """Runs client work on Ray worker actors and server work on the driver.

    ``address``: the Ray cluster to join when Ray is not initialized yet
    (``"auto"``: the one running on this machine; None: start a local one).
    ``num_workers``: worker actors (default: one per ``cpus_per_worker`` CPUs of
    the cluster).  ``client_data``: a zero-argument, picklable function returning
    a ``fedcore.simulation.ClientData``, called on each worker to build client
    datasets there (see ``federated_data``).  ``timeout_s`` bounds every wait
    for a worker; ``max_retries`` is how many times a stage is run again on the
    remaining workers after a worker died or timed out.  ``pool``: a
    ``WorkerPool`` to use instead of the shared one.
    """

    name = NAME

    def __init__(self, num_clients: Optional[int] = None, *, address: Optional[str] = None,
                 num_workers: Optional[int] = None, cpus_per_worker: float = 1.0,
                 client_data: Optional[Callable[[], Any]] = None, timeout_s: float = 600.0,
                 max_retries: int = 1, pool: Optional[WorkerPool] = None, ray_init_kwargs: Optional[dict] = None):
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if client_data is not None and not callable(client_data):
            raise TypeError(f"client_data must be a function returning a ClientData, got {client_data!r}")
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=address, **(ray_init_kwargs or {}))
        self.num_clients = num_clients
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.pool = pool if pool is not None else WorkerPool.shared(num_workers, cpus_per_worker)
        self.client_data = client_data
        self._driver_data = None
        self._sources: Dict[Any, Tuple[str, bytes, Any]] = {}
        self._refs: "weakref.WeakKeyDictionary[tf.data.Dataset, _DataRef]" = weakref.WeakKeyDictionary()
        # Serialized graphs of datasets sent to workers, held only as long as the datasets live.
        self._payloads: "weakref.WeakKeyDictionary[tf.data.Dataset, Tuple[bytes, Any]]" = weakref.WeakKeyDictionary()
        self.last_worker_seconds: List[float] = []
        self._optimized: "weakref.WeakKeyDictionary[bb.BuildingBlock, bb.BuildingBlock]" = weakref.WeakKeyDictionary()
        self._closed: "weakref.WeakKeyDictionary[bb.BuildingBlock, Tuple]" = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RayExecutor(num_clients={self.num_clients}, workers={self.pool.num_workers})"

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers

    # -- client data -----------------------------------------------------------

    def federated_data(self, client_ids: Sequence[str], preprocess: Optional[Callable] = None) -> List[tf.data.Dataset]:
        """The datasets of ``client_ids`` (as ``simulation.make_federated_data``), built on the workers.

        The driver builds its own copies from the same factory (lazily, for
        types and sizes); workers build theirs by client id, so the data is
        never sent from the driver.
        """
        if self.client_data is None:
            raise ExecutionError("federated_data needs RayExecutor(client_data=factory)")
        from fedcore.simulation import ClientData, make_federated_data

        if self._driver_data is None:
            data = self.client_data()
            if not isinstance(data, ClientData):
                raise TypeError(f"the client_data factory returned {type(data).__name__}, not a ClientData")
            self._driver_data = data
        source = self._sources.get(preprocess)
        if source is None:
            from ray import cloudpickle

            for fn in (self.client_data, preprocess):
                _by_value_if_unimportable(fn, cloudpickle)
            blob = cloudpickle.dumps((self.client_data, preprocess))
            source = (hashlib.sha256(blob).hexdigest(), blob, preprocess)
            self._sources[preprocess] = source
        datasets = make_federated_data(self._driver_data, client_ids, preprocess=preprocess)
        for cid, ds in zip(client_ids, datasets):
            self._refs[ds] = _DataRef("factory", source[0], cid)
        return datasets

    def _dataset_ref(self, ds: tf.data.Dataset, actor, extras: Dict[str, Dict]) -> _DataRef:
        ref = self._refs.get(ds)
        if ref is None:
            payload = _dataset_payload(ds)
            # A graph is named by its content; elements by a fresh name (never reused, unlike id()).
            token = uuid.uuid4().hex if payload[0] == "elements" else hashlib.sha256(payload[1]).hexdigest()
            self._payloads[ds] = payload
            ref = _DataRef("shipped", token)
            self._refs[ds] = ref
        holds = self.pool.holds[actor]
        if ref.kind == "factory" and ("src", ref.key) not in holds:
            extras["sources"][ref.key] = next(s[1] for s in self._sources.values() if s[0] == ref.key)
            holds.add(("src", ref.key))
        elif ref.kind == "shipped" and ("ds", ref.key) not in holds:
            extras["datasets"][ref.key] = self._payloads[ds]
            holds.add(("ds", ref.key))
        return ref

    # -- functions ---------------------------------------------------------------

    def ship(self, fn: Any) -> _Shipped:
        """A driver function value closed over what it captures, serialized once per IR node."""
        if not isinstance(fn, _Closure):
            raise ExecutionError(f"client work must be a function of the computation, got {type(fn).__name__}")
        closed, captured = _close(fn.node, fn.env)
        env = Struct.unnamed(*[force(v) for _, v, _ in captured]) if captured else None
        cached = self._closed.get(fn.node) if not _captures_closures(fn.node, fn.env) else None
        if cached is None:
            comp = Computation(closed, "client_work")
            data = serialize(comp)
            cached = (hashlib.sha256(data).hexdigest(), data, comp)
            if not _captures_closures(fn.node, fn.env):
                self._closed[fn.node] = cached
        return _Shipped(cached[0], cached[1], env, bool(captured), cached[2])

    # -- execution ---------------------------------------------------------------

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        n = num_clients if num_clients is not None else self.num_clients
        interp = _DriverInterpreter(self, n)
        ir = self._optimized.get(comp.ir)
        if ir is None:
            ir = self._optimized[comp.ir] = run_pipeline(comp.ir)
        fn = interp.evaluate(ir, {})
        t = comp.type_signature
        if t.parameter is None:
            result = fn()
        else:
            result = fn(_wrap_clients(argument, t.parameter))
        return interp.result(result, t.result)

    def dispatch(self, num_clients: int, ops: List[Tuple]) -> List[List[Any]]:
        """Runs ``ops`` (aggregations or 'values') over all clients; per op, each worker's partial.

        For a 'values' op the result is the per-client list in client order.
        """
        if num_clients == 0:
            return [[] for _ in ops]
        ray = _import_ray()
        sizes = self._client_sizes(num_clients, ops)
        failures: List[str] = []
        for attempt in range(self.max_retries + 1):
            actors = list(self.pool.actors)
            if not actors:
                break
            shards = _assign(sizes, len(actors))
            work = [(a, s) for a, s in zip(actors, shards) if s]
            futures = [a.run.remote(self._request(a, s, ops)) for a, s in work]
            self.pool.dispatches += len(futures)
            ready, not_ready = ray.wait(futures, num_returns=len(futures), timeout=self.timeout_s)
            dead = []
            replies: Dict[int, Any] = {}
            for i, (future, (actor, _)) in enumerate(zip(futures, work)):
                if future in not_ready:
                    dead.append((actor, f"no answer within {self.timeout_s:g} s"))
                    continue
                try:
                    replies[i] = ray.get(future, timeout=self.timeout_s)
                except ray.exceptions.GetTimeoutError:
                    dead.append((actor, f"no answer within {self.timeout_s:g} s"))
                except ray.exceptions.RayActorError as e:
                    dead.append((actor, f"the worker died ({type(e).__name__})"))
                except ray.exceptions.RayError as e:  # the worker is fine; its answer could not be read
                    raise ExecutionError(f"a Ray worker's answer could not be received: {e}") from None
            if dead:
                for actor, why in dead:
                    failures.append(why)
                    _log.warning("fedcore RayExecutor: dropping a worker: %s (attempt %d)", why, attempt + 1)
                    self.pool.drop(actor)
                continue
            # Seconds each worker spent on this stage, for profiling: its busiest worker bounds the stage.
            self.last_worker_seconds = [replies[i][2] for i in range(len(work))]
            for i, reply in replies.items():
                if reply[0] == "error":
                    # What the worker installed before failing is unknown: send everything again next time.
                    self.pool.holds[work[i][0]] = set()
                    raise ExecutionError(f"client work failed on a Ray worker: {reply[1]}")
            return self._combine(num_clients, ops, work, [replies[i][1] for i in range(len(work))])
        raise WorkerFailure(
            f"a stage of client work failed after {len(failures)} worker failure(s) "
            f"({'; '.join(failures) or 'no workers left'}); {self.pool.num_workers} worker(s) left, "
            f"max_retries={self.max_retries}"
        )

    def _combine(self, n: int, ops: List[Tuple], work: List, replies: List[List[Any]]) -> List[Any]:
        out = []
        for k, op in enumerate(ops):
            if op[0] == "values":
                values: List[Any] = [None] * n
                for (_, shard), reply in zip(work, replies):
                    for i, v in zip(shard, _from_wire(reply[k])):
                        values[i] = v
                out.append(values)
            else:
                out.append([_from_wire(reply[k]) for reply in replies])
        return out

    def _client_sizes(self, n: int, ops: List[Tuple]) -> List[int]:
        """Per client, the number of elements of its datasets (1 where unknown): the work it brings."""
        sizes = [1] * n
        for node in _nodes_of(ops):
            if node.kind != "arg":
                continue
            for i, v in enumerate(node.payload["values"]):
                for ds in _datasets_in(v):
                    card = int(ds.cardinality())
                    sizes[i] += card if card > 0 else 1
        return sizes

    def _request(self, actor, shard: List[int], ops: List[Tuple]) -> Dict[str, Any]:
        holds = self.pool.holds[actor]
        extras: Dict[str, Dict] = {"functions": {}, "sources": {}, "datasets": {}}

        def ship(s: _Shipped) -> Tuple[str, Any, bool]:
            if ("fn", s.sha) not in holds:
                extras["functions"][s.sha] = s.data
                holds.add(("fn", s.sha))
            return s.sha, _to_wire(s.env), s.has_env

        def ref(ds):
            return self._dataset_ref(ds, actor, extras)

        nodes = []
        for node in _nodes_of(ops):
            p = node.payload
            if node.kind == "arg":
                nodes.append(("arg", node.id, _to_wire([p["values"][i] for i in shard], ref)))
            elif node.kind == "const":
                nodes.append(("const", node.id, _to_wire(p["value"], ref)))
            elif node.kind == "select":
                nodes.append(("select", node.id, p["index"], node.inputs[0].id))
            elif node.kind == "zip":
                nodes.append(("zip", node.id, p["names"], [i.id for i in node.inputs]))
            elif node.kind == "map":
                nodes.append(("map", node.id, *ship(p["shipped"]), node.inputs[0].id))
            elif node.kind == "eval":
                nodes.append(("eval", node.id, *ship(p["shipped"])))
        outputs = []
        for op in ops:
            kind = op[0]
            if kind == "values":
                outputs.append(("values", op[1].id))
            elif kind == "fused":
                outputs.append(("fused", *ship(op[1]), op[2].id))
            elif kind == "wmean":
                outputs.append(("wmean", op[1].id, op[2].id))
            elif kind == "secure_sum":  # each client gets only its own pairwise seeds
                seeds = {i: secure_aggregation.client_seeds(i, op[4]) for i in shard}
                outputs.append(("secure_sum", op[1].id, _to_wire(op[2]), op[3], seeds))
            elif kind == "aggregate":
                outputs.append(("aggregate", op[1].id, _to_wire(op[2]), *ship(op[3])))
            else:
                outputs.append((kind, op[1].id))
        # The held-set is updated before the request is sent; a failed send drops the actor anyway.
        return {"clients": shard, "nodes": nodes, "outputs": outputs, **extras}


_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def _dataset_payload(ds: tf.data.Dataset) -> Tuple[str, Any, Any]:
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
            return ("graph", graph, ds.element_spec)
    try:
        elements = dataset_elements(ds, to_type(ds.element_spec))
    except Exception as e:  # noqa: BLE001
        raise ExecutionError(f"a client dataset can be neither serialized nor read to send it to a Ray worker: {e}") from None
    return ("elements", _to_wire(elements), None)


def _by_value_if_unimportable(fn: Any, cloudpickle) -> None:
    """Functions of modules that workers cannot import (no import spec: notebooks, exec'd pages) travel by value."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is not None and module.__name__ != "__main__" and getattr(module, "__spec__", None) is None:
        cloudpickle.register_pickle_by_value(module)


def _nodes_of(ops: List[Tuple]) -> List[CNode]:
    """The client nodes the ops need, inputs before the nodes that use them."""
    order: List[CNode] = []
    seen = set()

    def visit(node: CNode):
        if node.id in seen:
            return
        seen.add(node.id)
        for i in node.inputs:
            visit(i)
        order.append(node)

    for op in ops:
        for part in op[1:]:
            if isinstance(part, CNode):
                visit(part)
    return order


def _datasets_in(value: Any):
    if isinstance(value, tf.data.Dataset):
        yield value
    elif isinstance(value, (Struct, list)):
        for v in value:
            yield from _datasets_in(v)


def _assign(sizes: List[int], workers: int) -> List[List[int]]:
    """Greedy: clients from largest to smallest, each to the least loaded worker; shards in client order."""
    loads = [0] * workers
    shards: List[List[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        loads[w] += sizes[i]
        shards[w].append(i)
    return [sorted(s) for s in shards]


def _wrap_clients(value: Any, t: Type) -> Any:
    """The argument with each per-client part as an 'arg' node."""
    match t:
        case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
            return CNode("arg", values=list(value))
        case StructType():
            return Struct(zip(t.names(), [_wrap_clients(v, e) for v, e in zip(value, t)]))
    return value


def _captures_closures(node: bb.BuildingBlock, env: Dict[str, Any]) -> bool:
    return any(isinstance(env.get(name), _Closure) for name in free_names(node))


def _close(node: bb.BuildingBlock, env: Dict[str, Any]) -> Tuple[bb.BuildingBlock, List[Tuple[str, Any, Type]]]:
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
        if isinstance(value, _Closure):
            inner, inner_captured = _close(value.node, value.env)
            if inner_captured:
                raise ExecutionError("client work calling a function that captures values is not supported")
            body = substitute(body, name, inner)
        elif isinstance(value, CNode):
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

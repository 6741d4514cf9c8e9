"""Distributed execution on Ray: client work on worker actors, server work on the driver.

``RayExecutor`` runs the compiler's execution pipeline (map+aggregate fusion
included) and interprets the result on the driver (``driver``, with the rules
of ``rules``).  A value at CLIENTS is a plan node (``plan``); nothing runs on
the workers until a value computed from client work is needed.  Then every
aggregation queued so far goes out at once: **one request per worker**,
holding the client program that feeds the aggregations, restricted to that
worker's clients (``wire.Request``).  Each worker (``worker``) runs its
clients' maps with a local ``TensorFlowExecutor`` and computes partial
aggregates: with the aggregation's monoid, or the user's accumulator for the
general aggregate, or masked partial sums for the secure sum
(``fedcore.runtime.secure_aggregation``: a second request per worker, after
the driver relays the public keys of the clients' key pairs, made on the
workers); the driver merges the partials and reports once.

Functions and datasets are shipped once per worker and cached there
(``shipping``).  Clients are assigned to workers greedily by dataset size
(largest first, to the least loaded worker).

Faults: a worker that dies or does not answer within ``timeout_s`` is dropped
and the whole stage is run again on the remaining workers, up to
``max_retries`` times; after that, or when no worker is left, the call raises
``WorkerFailure`` (an ``ExecutionError``) that says why each worker was
dropped ("timed out after timeout_s=... s" or "the worker died").

Joining a cluster (``address="host:port"``) first opens a TCP connection to
that address, for at most ``connect_timeout_s`` seconds: with nothing
listening there, the constructor raises ``ConnectionError`` at once instead
of waiting in ``ray.init``.  Client work is pure, so a retried
stage gives the same result; partial results of a failed attempt are never used.
"""

from __future__ import annotations

import logging
import math
import socket
import weakref
from typing import Any, Callable, List, Optional, Sequence, Tuple

import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.transformations import pipeline, run_pipeline
from fedcore.runtime import secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray import plan
from fedcore.runtime.ray.driver import DriverInterpreter
from fedcore.runtime.ray.pool import WorkerFailure, WorkerPool, import_ray
from fedcore.runtime.ray.shipping import Shipping
from fedcore.runtime.ray.wire import FunctionRef, Request
from fedcore.structure import Struct

NAME = "ray"
_log = logging.getLogger(__name__)

__all__ = ["RayExecutor", "WorkerFailure", "WorkerPool", "assign"]


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
    ``WorkerPool`` to use instead of the shared one.  ``connect_timeout_s``
    bounds the check that something listens at ``address`` (host:port).
    Arguments are checked before Ray is started.
    """

    name = NAME

    def __init__(self, num_clients: Optional[int] = None, *, address: Optional[str] = None,
                 num_workers: Optional[int] = None, cpus_per_worker: float = 1.0,
                 client_data: Optional[Callable[[], Any]] = None, timeout_s: float = 600.0,
                 max_retries: int = 1, pool: Optional[WorkerPool] = None, ray_init_kwargs: Optional[dict] = None,
                 connect_timeout_s: float = 10.0):
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        if client_data is not None and not callable(client_data):
            raise TypeError(f"client_data must be a function returning a ClientData, got {client_data!r}")
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string such as 'auto' or 'host:port', or None, got {address!r}")
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                        or num_workers < 1):
            raise ValueError(f"num_workers must be a positive int or None (one per cpus_per_worker CPUs), "
                             f"got {num_workers!r}")
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, (int, float)) or not (
            math.isfinite(cpus_per_worker) and cpus_per_worker > 0
        ):
            raise ValueError(f"cpus_per_worker must be a positive number, got {cpus_per_worker!r}")
        if isinstance(connect_timeout_s, bool) or not isinstance(connect_timeout_s, (int, float)) or not (
            math.isfinite(connect_timeout_s) and connect_timeout_s > 0
        ):
            raise ValueError(f"connect_timeout_s must be a positive number of seconds, got {connect_timeout_s!r}")
        ray = import_ray()
        if not ray.is_initialized():
            if address is not None:
                check_reachable(address, connect_timeout_s)
            ray.init(address=address, **(ray_init_kwargs or {}))
        self.num_clients = num_clients
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.pool = pool if pool is not None else WorkerPool.shared(num_workers, cpus_per_worker)
        self.client_data = client_data
        self.shipping = Shipping(client_data)
        self.last_worker_seconds: List[float] = []
        self._dropped: List[str] = []  # why workers were dropped, for the error once none is left
        self._optimized: "weakref.WeakKeyDictionary[bb.BuildingBlock, bb.BuildingBlock]" = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RayExecutor(num_clients={self.num_clients}, workers={self.pool.num_workers})"

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers

    def federated_data(self, client_ids: Sequence[str], preprocess: Optional[Callable] = None) -> List[tf.data.Dataset]:
        """The datasets of ``client_ids`` (as ``simulation.make_federated_data``), built on the workers.

        The driver builds its own copies from the same factory (lazily, for
        types and sizes); workers build theirs by client id, so the data is
        never sent from the driver.
        """
        return self.shipping.federated_data(client_ids, preprocess)

    def ship(self, fn: Any) -> FunctionRef:
        """A driver function value, ready to send (see ``shipping.Shipping.ship``)."""
        return self.shipping.ship(fn)

    # -- execution ---------------------------------------------------------------

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        n = num_clients if num_clients is not None else self.num_clients
        interp = DriverInterpreter(self, n)
        ir = self._optimized.get(comp.ir)
        if ir is None:
            ir = self._optimized[comp.ir] = run_pipeline(comp.ir, pipeline("execution"))
        fn = interp.evaluate(ir, {})
        t = comp.type_signature
        result = fn() if t.parameter is None else fn(interp.wrap_clients(argument, t.parameter))
        return interp.result(result, t.result)

    def dispatch(self, num_clients: int, nodes: List[plan.Node], outputs: List[plan.Output]) -> List[List[Any]]:
        """One stage: ``outputs`` (over ``nodes``) over all clients; per output, its gathered parts."""
        if num_clients == 0:
            return [out.gather([], [], 0) for out in outputs]
        ray = import_ray()
        sizes = _client_sizes(num_clients, nodes)
        failures: List[str] = []
        for attempt in range(self.max_retries + 1):
            actors = list(self.pool.actors)
            if not actors:
                break
            work = [(a, s) for a, s in zip(actors, assign(sizes, len(actors))) if s]
            futures = [a.run.remote(self._request(a, s, nodes, outputs)) for a, s in work]
            self.pool.dispatches += len(futures)
            dead, replies = self._answers(ray, futures, work)
            shards = [s for _, s in work]
            parts = None
            if not dead:
                # Seconds each worker spent on this stage, for profiling: its busiest worker bounds the stage.
                self.last_worker_seconds = [r.seconds for r in replies]
                self._check(work, replies)
                parts = [[r.outputs[k] for r in replies] for k in range(len(outputs))]
                dead = self._second_round(ray, work, outputs, parts, num_clients)
            if dead:
                for actor, why in dead:
                    failures.append(why)
                    self._dropped.append(why)
                    _log.warning("fedcore RayExecutor: dropping a worker: %s (attempt %d)", why, attempt + 1)
                    self.pool.drop(actor)
                continue
            return [out.gather(shards, parts[k], num_clients) for k, out in enumerate(outputs)]
        if not failures:
            earlier = "; ".join(self._dropped[-5:])
            raise WorkerFailure(
                "a stage of client work cannot run: no workers left"
                + (f" (they were dropped after earlier failures: {earlier})" if earlier else "")
            )
        raise WorkerFailure(
            f"a stage of client work failed after {len(failures)} worker failure(s) "
            f"({'; '.join(failures)}); {self.pool.num_workers} worker(s) left, max_retries={self.max_retries}"
        )

    def _answers(self, ray, futures, work) -> Tuple[List[Tuple[Any, str]], List[Any]]:
        """The workers' replies, and the workers that died or did not answer within ``timeout_s``."""
        _, not_ready = ray.wait(futures, num_returns=len(futures), timeout=self.timeout_s)
        dead, replies = [], []
        for future, (actor, _) in zip(futures, work):
            if future in not_ready:
                dead.append((actor, f"timed out: no answer within timeout_s={self.timeout_s:g} s"))
                continue
            try:
                replies.append(ray.get(future, timeout=self.timeout_s))
            except ray.exceptions.GetTimeoutError:
                dead.append((actor, f"timed out: no answer within timeout_s={self.timeout_s:g} s"))
            except ray.exceptions.RayActorError as e:
                dead.append((actor, f"the worker died ({type(e).__name__})"))
            except ray.exceptions.RayError as e:  # the worker is fine; its answer could not be read
                raise ExecutionError(f"a Ray worker's answer could not be received: {e}") from None
        return dead, replies

    def _check(self, work, replies) -> None:
        for (actor, _), reply in zip(work, replies):
            if not reply.ok:
                # What the worker installed before failing is unknown: send everything again next time.
                self.pool.holds[actor] = set()
                raise ExecutionError(f"client work failed on a Ray worker: {reply.error}")

    def _second_round(self, ray, work, outputs: List[plan.Output], parts: List[List[Any]], num_clients: int):
        """The second round of the stage's two-round outputs (secure sums: the driver relays the public keys
        the workers sent, and gets their masked sums), on the same workers; ``parts`` updated in place.

        Returns the workers that died or timed out: the caller runs the whole stage again, so every
        client side is made anew, with fresh keys (no value masked under the lost keys is ever used).
        """
        two_round = [k for k, out in enumerate(outputs) if isinstance(out, plan.SecureSumPartial)]
        if not two_round:
            return []
        shards = [s for _, s in work]
        try:
            relayed = {k: outputs[k].relay(shards, parts[k], num_clients) for k in two_round}
        except secure_aggregation.SecureSumError as e:
            raise ExecutionError(str(e)) from None
        messages = [(outputs[k], relayed[k][-1]) for k in two_round]
        futures = [a.follow_up.remote(messages) for a, _ in work]
        self.pool.dispatches += len(futures)
        dead, replies = self._answers(ray, futures, work)
        if dead:
            return dead
        self._check(work, replies)
        for j, k in enumerate(two_round):
            parts[k] = outputs[k].conclude(relayed[k], shards, [r.outputs[j] for r in replies])
        return []

    def _request(self, actor, shard: List[int], nodes: List[plan.Node], outputs: List[plan.Output]) -> Request:
        """The request for one worker: the plan for its clients, and what it does not hold yet."""
        shipment = self.shipping.shipment(self.pool.holds[actor], shard)
        encoded_nodes = [node.encode(shipment) for node in nodes]
        encoded_outputs = [out.encode(shipment) for out in outputs]
        return Request(shard, encoded_nodes, encoded_outputs, shipment.functions, shipment.sources, shipment.datasets)


def check_reachable(address: str, timeout_s: float) -> None:
    """Raises ConnectionError unless a TCP connection to ``address`` ("host:port", optionally "ray://host:port")
    opens within ``timeout_s`` seconds.  Other addresses ("auto", "local") are left to ``ray.init``."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address}: a connection to it failed within {timeout_s:g} s ({why}); "
            "start one there (ray start --head) or check the address"
        ) from None


def _client_sizes(n: int, nodes: List[plan.Node]) -> List[int]:
    """Per client, the number of elements of its datasets (1 where unknown): the work it brings."""
    sizes = [1] * n
    for node in nodes:
        if isinstance(node.op, plan.Arg):
            for i, v in enumerate(node.op.values):
                for ds in _datasets_in(v):
                    card = int(ds.cardinality())
                    sizes[i] += card if card > 0 else 1
    return sizes


def _datasets_in(value: Any):
    if isinstance(value, tf.data.Dataset):
        yield value
    elif isinstance(value, (Struct, list)):
        for v in value:
            yield from _datasets_in(v)


def assign(sizes: List[int], workers: int) -> List[List[int]]:
    """Greedy: clients from largest to smallest, each to the least loaded worker; shards in client order."""
    loads = [0] * workers
    shards: List[List[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        w = min(range(workers), key=lambda w: (loads[w], w))
        loads[w] += sizes[i]
        shards[w].append(i)
    return [sorted(s) for s in shards]

"""The pool of worker actors, shared by the RayExecutors of one Ray session and configuration."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional

from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray.worker import Worker


class WorkerFailure(ExecutionError):
    """Workers died or stopped answering, and the retry policy gave up."""


def import_ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("RayExecutor needs Ray: pip install 'fedcore-tf[ray]'") from None
    return ray


def _session(ray) -> Any:
    """This driver's connection to its Ray cluster, by public API: pools of an earlier connection
    (or of a cluster shut down since) have lost their actors and must not be reused.

    The driver's node ID is new for every Ray node started, the job ID new for
    every connection of a driver to a cluster.
    """
    context = ray.get_runtime_context()
    return (context.gcs_address, context.get_node_id(), context.get_job_id())


def start_timeout() -> float:
    """How long a pool waits for its workers to start: ``FEDCORE_RAY_START_TIMEOUT_S``, default 120 s.

    Each worker imports TensorFlow when it starts; on a loaded machine that can
    take minutes, so slow machines (and test runs beside other work) raise it.
    """
    text = os.environ.get("FEDCORE_RAY_START_TIMEOUT_S", "120")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f"FEDCORE_RAY_START_TIMEOUT_S must be a positive number of seconds, got {text!r}")
    return value


class WorkerPool:
    """Worker actors, shared by the RayExecutors that use it; remembers what each one holds."""

    _shared: Dict[Any, "WorkerPool"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, num_workers: Optional[int] = None, cpus_per_worker: float = 1.0,
                 threads_per_worker: Optional[int] = None, start_timeout_s: Optional[float] = None):
        ray = import_ray()
        start_timeout_s = start_timeout() if start_timeout_s is None else start_timeout_s
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
        remote = ray.remote(Worker).options(
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
        ray = import_ray()
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
        ray = import_ray()
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

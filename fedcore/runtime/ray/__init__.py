"""Running computations on a Ray cluster (``pip install 'fedcore-tf[ray]'``)."""

from fedcore.runtime.ray.executor import RayExecutor, WorkerFailure, WorkerPool

__all__ = ["RayExecutor", "WorkerFailure", "WorkerPool"]

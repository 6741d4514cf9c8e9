"""Seconds per FedAvg round of a small CNN: RayExecutor with 1 and 2 workers against the TF executor.

The workload is compute-heavy: EMNIST-shaped examples (float32[28,28,1],
int32 label), 64 per client, batches of 16, one epoch, through a small CNN
(two 3x3 convolutions with max-pooling, then Dense(10)), 100 clients per
round, client SGD at 0.05.  Client data comes from a ClientData factory, so
Ray workers build it themselves.

Four configurations run in one session of Ray started with ``num_cpus=2``:

* ``tensorflow, 1 thread``: the TF executor alone in one process pinned to one
  thread (inside a Ray actor, so its threads can be pinned): the baseline for
  the overhead of distributing;
* ``tensorflow, all threads``: the TF executor in this process, unpinned;
* ``ray, 1 worker`` and ``ray, 2 workers``: RayExecutor, each worker pinned to
  one thread (``tf.config.threading``), the server step on the driver.

Each figure is the median seconds per round after a warm-up round.  Printed
ratios: the 2-worker speed-up over 1 worker and over the TF executor, and the
overhead of one Ray worker over the 1-thread TF executor.  Only ratios within
one run are comparable.

Run by hand:  python benchmarks/ray_round.py [--rounds 4] [--clients 100] [--write]
``--write`` replaces the Ray section of docs/benchmarks.md, keeping the others.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ray  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedcore  # noqa: E402
from fedcore import learning, simulation  # noqa: E402
from fedcore.runtime.ray import RayExecutor, WorkerPool  # noqa: E402
from fedcore.runtime.tensorflow import TensorFlowExecutor  # noqa: E402

EXAMPLES = 64
BATCH = 16
CLIENT_LR = 0.05
SECTION = "## Ray: FedAvg rounds of a small CNN on 1 and 2 workers"


def client_data(num_clients: int, seed: int = 0) -> simulation.ClientData:
    """Synthetic EMNIST-shaped clients, the same on every machine for a seed."""
    rng = np.random.default_rng(seed)
    slices = {}
    for i in range(num_clients):
        labels = rng.integers(0, 10, EXAMPLES).astype(np.int32)
        pixels = rng.random((EXAMPLES, 28, 28, 1), dtype=np.float32) * 0.5
        pixels[np.arange(EXAMPLES), labels * 2 + 4, 4:24, 0] += 0.5  # a learnable stroke per label
        slices[f"client_{i:03d}"] = collections.OrderedDict(x=pixels, y=labels)
    return simulation.ClientData.from_tensor_slices(slices)


def to_batches(dataset):
    return dataset.batch(BATCH)


def model_fn():
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((28, 28, 1)),
        layers.Conv2D(16, 3, activation="relu"),
        layers.MaxPool2D(),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPool2D(),
        layers.Flatten(),
        layers.Dense(10),
    ])
    return learning.from_keras_model(
        model,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1]), y=tf.TensorSpec([None], tf.int32)),
    )


def build_process():
    tf.keras.utils.set_random_seed(0)
    return learning.build_federated_averaging_process(
        model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=CLIENT_LR))


_SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(10_000_000):\n    x += i\nprint(time.perf_counter() - t)"


def parallel_capacity() -> float:
    """How many cores two CPU-bound processes get at once right now (2.0 on an idle 2-core machine)."""
    import subprocess

    def spin(count: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
                 for _ in range(count)]
        return max(float(p.communicate(timeout=300)[0]) for p in procs)

    alone = min(spin(1) for _ in range(2))
    together = spin(2)
    return 2 * alone / together


def time_rounds(run_round: Callable[[], None], rounds: int) -> List[float]:
    run_round()  # warm-up: tracing, compiling, reading client data
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_round()
        times.append(time.perf_counter() - start)
    return times


class PinnedTensorFlow:
    """The TF executor alone in a process pinned to ``threads`` threads."""

    def __init__(self, threads: int, num_clients: int):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.process = build_process()
        self.data = simulation.make_federated_data(client_data(num_clients), client_data(num_clients).client_ids,
                                                   preprocess=to_batches)
        self.executor = TensorFlowExecutor()
        with fedcore.execution_context(self.executor):
            self.state = self.process.initialize()

    def time_rounds(self, rounds: int) -> List[float]:
        def run():
            with fedcore.execution_context(self.executor):
                self.process.next(self.state, self.data)

        return time_rounds(run, rounds)


def measure(num_clients: int, rounds: int) -> Dict[str, List[float]]:
    factory = _Factory(num_clients)
    results: Dict[str, List[float]] = {}
    capacity = [parallel_capacity()]

    print("tensorflow, 1 thread (one process) ...", flush=True)
    baseline = ray.remote(PinnedTensorFlow).options(num_cpus=1).remote(1, num_clients)
    results["fedcore TF executor, 1 thread"] = ray.get(baseline.time_rounds.remote(rounds), timeout=3600)
    ray.kill(baseline)

    process = build_process()
    ids = factory().client_ids
    print("tensorflow, all threads (this process) ...", flush=True)
    local = TensorFlowExecutor()
    data = simulation.make_federated_data(factory(), ids, preprocess=to_batches)
    with fedcore.execution_context(local):
        state = process.initialize()

    def local_round():
        with fedcore.execution_context(local):
            process.next(state, data)

    results["fedcore TF executor, all threads"] = time_rounds(local_round, rounds)

    for workers in (1, 2):
        print(f"ray, {workers} worker(s) ...", flush=True)
        pool = WorkerPool(num_workers=workers, cpus_per_worker=1)
        try:
            executor = RayExecutor(pool=pool, client_data=factory, timeout_s=1800)
            federated = executor.federated_data(ids, preprocess=to_batches)
            before = pool.dispatches

            def ray_round():
                with fedcore.execution_context(executor):
                    process.next(state, federated)

            results[f"RayExecutor, {workers} worker{'s' if workers > 1 else ''} x 1 thread"] = time_rounds(
                ray_round, rounds)
            per_round = (pool.dispatches - before) / (rounds + 1)
            print(f"  dispatches per round: {per_round:g} (workers: {workers})", flush=True)
        finally:
            pool.shutdown()
    capacity.append(parallel_capacity())
    return results, capacity


class _Factory:
    """A picklable ClientData factory: the workers build the same clients from the seed."""

    def __init__(self, num_clients: int):
        self.num_clients = num_clients
        self._data = None

    def __getstate__(self):
        return {"num_clients": self.num_clients}

    def __setstate__(self, state):
        self.num_clients, self._data = state["num_clients"], None

    def __call__(self) -> simulation.ClientData:
        if self._data is None:
            self._data = client_data(self.num_clients)
        return self._data


def table(results: Dict[str, List[float]], num_clients: int, capacity: List[float]) -> str:
    medians = {name: statistics.median(times) for name, times in results.items()}
    one = medians["RayExecutor, 1 worker x 1 thread"]
    two = medians["RayExecutor, 2 workers x 1 thread"]
    tf1 = medians["fedcore TF executor, 1 thread"]
    tf_all = medians["fedcore TF executor, all threads"]
    lines = [
        "| executor | s / round (median) | rounds timed | × TF executor, 1 thread |",
        "|---|---:|---:|---:|",
    ]
    for name, times in results.items():
        lines.append(f"| {name} | {medians[name]:.3f} | {len(times)} | {medians[name] / tf1:.2f} |")
    lines += [
        "",
        f"- speed-up of 2 workers over 1 worker: **{one / two:.2f}×**",
        f"- speed-up of 2 workers over the TF executor with all threads in one process: **{tf_all / two:.2f}×**",
        f"- overhead per round of one Ray worker over the TF executor on one thread: **{one / tf1:.2f}×** "
        f"({one - tf1:+.3f} s)",
        f"- {num_clients} clients per round",
        f"- cores two CPU-bound processes got at once on this machine, before and after the timings: "
        f"{capacity[0]:.2f} and {capacity[1]:.2f} (2.00 on an idle 2-core machine; other load lowers it, "
        "and with it the speed-up 2 workers can reach)",
    ]
    return "\n".join(lines)


def write_section(path: str, section: str) -> None:
    """Replaces the Ray section of docs/benchmarks.md, keeping every other section."""
    with open(path) as f:
        body = f.read()
    head, *parts = body.split("\n## ")
    parts = ["## " + p for p in parts if not ("## " + p).startswith(SECTION)]
    with open(path, "w") as f:
        f.write(head.rstrip() + "\n\n" + "\n".join(p.rstrip() + "\n" for p in parts + [section]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md"))
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results, capacity = measure(args.clients, args.rounds)
    finally:
        ray.shutdown()
    text = table(results, args.clients, capacity)
    print(text)
    if args.write:
        machine = (f"{platform.machine()}, {os.cpu_count()} cores, CPU only, Python {platform.python_version()}, "
                   f"TensorFlow {tf.__version__}, Ray {ray.__version__}")
        command = " ".join(["python", "benchmarks/ray_round.py", *(argv if argv is not None else sys.argv[1:])])
        section = (
            f"{SECTION}\n\n{machine}. Generated by `{command}`; see the docstring of "
            "`benchmarks/ray_round.py` for the workload and [distributed.md](distributed.md) for the executor. "
            "Each worker's TensorFlow is pinned to one thread; the TF executor baseline on one thread runs alone "
            "in one process.\n\n" + text + "\n"
        )
        write_section(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

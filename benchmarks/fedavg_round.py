"""Seconds per FedAvg round: fedcore's executors against hand-written TensorFlow.

The workload is the seed tutorial's: EMNIST-shaped examples (pixels
float32[28,28], label int32), 92 per client, preprocessed with repeat(10),
flatten to 784, shuffle(500), batch(20); a Dense(10, softmax) layer with zero
initial weights; client SGD at 0.02 and server SGD at 1.0.

Run by hand:  python benchmarks/fedavg_round.py [--cohorts 3 10 100 1000] [--rounds 5] [--xla]
It prints a table of steady-state seconds per round (median over rounds after
a warm-up round), milliseconds per client, and each figure's ratio to the
hand-vectorized floor measured in the same run, and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.runtime.execution import execute
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.compiler.tf_function import onednn_on

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report  # noqa: E402
from _report import cpu_model  # noqa: E402

EXAMPLES_PER_CLIENT = 92
EPOCHS = 10
SHUFFLE_BUFFER = 500
BATCH = 20
CLIENT_LR = 0.02
SERVER_LR = 1.0

MODEL_TYPE = fedcore.to_type(collections.OrderedDict(kernel=(tf.float32, [784, 10]), bias=(tf.float32, [10])))
BATCH_TYPE = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 784]), y=(tf.int32, [None])))
STATE_TYPE = fedcore.to_type(collections.OrderedDict(model=MODEL_TYPE, examples=tf.float32))


def make_client_arrays(num_clients: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        dict(
            pixels=rng.random((EXAMPLES_PER_CLIENT, 28, 28), dtype=np.float32),
            label=rng.integers(0, 10, EXAMPLES_PER_CLIENT).astype(np.int32),
        )
        for _ in range(num_clients)
    ]


def preprocess(arrays: Dict[str, np.ndarray]) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    return (
        ds.repeat(EPOCHS)
        .map(lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [784]), y=e["label"]))
        .shuffle(SHUFFLE_BUFFER)
        .batch(BATCH)
    )


def loss_fn(kernel, bias, x, y):
    probs = tf.nn.softmax(tf.matmul(x, kernel) + bias)
    return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, probs))


# --------------------------------------------------------------------------
# FedAvg written on fedcore's public core.


@fedcore.tf_computation(STATE_TYPE, BATCH_TYPE)
def batch_train(state, batch):
    model = state["model"] if isinstance(state, dict) else state.model
    with tf.GradientTape() as tape:
        tape.watch([model["kernel"], model["bias"]])
        loss = loss_fn(model["kernel"], model["bias"], batch["x"], batch["y"])
    g_kernel, g_bias = tape.gradient(loss, [model["kernel"], model["bias"]])
    return collections.OrderedDict(
        model=collections.OrderedDict(kernel=model["kernel"] - CLIENT_LR * g_kernel, bias=model["bias"] - CLIENT_LR * g_bias),
        examples=state["examples"] + tf.cast(tf.shape(batch["y"])[0], tf.float32),
    )


@fedcore.tf_computation(MODEL_TYPE)
def start_state(model):
    return collections.OrderedDict(model=model, examples=tf.constant(0.0))


@fedcore.federated_computation(MODEL_TYPE, fedcore.SequenceType(BATCH_TYPE))
def client_update(model, batches):
    return fedcore.sequence_reduce(batches, start_state(model), batch_train)


@fedcore.tf_computation(MODEL_TYPE, MODEL_TYPE)
def server_update(model, mean_client_model):
    return collections.OrderedDict(
        kernel=model["kernel"] + SERVER_LR * (mean_client_model["kernel"] - model["kernel"]),
        bias=model["bias"] + SERVER_LR * (mean_client_model["bias"] - model["bias"]),
    )


@fedcore.federated_computation(fedcore.type_at_server(MODEL_TYPE), fedcore.type_at_clients(fedcore.SequenceType(BATCH_TYPE)))
def fedavg_round(model, data):
    states = fedcore.federated_map(client_update, fedcore.federated_zip([fedcore.federated_broadcast(model), data]))
    mean_model = fedcore.federated_mean(states.model, states.examples)
    return fedcore.federated_map(server_update, fedcore.federated_zip([model, mean_model]))


# --------------------------------------------------------------------------
# Hand-written baselines.


@tf.function
def _client_train(kernel, bias, ds):
    examples = tf.constant(0.0)
    for batch in ds:
        with tf.GradientTape() as tape:
            tape.watch([kernel, bias])
            loss = loss_fn(kernel, bias, batch["x"], batch["y"])
        g_kernel, g_bias = tape.gradient(loss, [kernel, bias])
        kernel = kernel - CLIENT_LR * g_kernel
        bias = bias - CLIENT_LR * g_bias
        examples += tf.cast(tf.shape(batch["y"])[0], tf.float32)
    return kernel, bias, examples


def plain_tf_round(model, datasets):
    kernels, biases, weights = [], [], []
    for ds in datasets:
        k, b, n = _client_train(model["kernel"], model["bias"], ds)
        kernels.append(k)
        biases.append(b)
        weights.append(n)
    w = tf.stack(weights)
    mean_k = tf.tensordot(w, tf.stack(kernels), 1) / tf.reduce_sum(w)
    mean_b = tf.tensordot(w, tf.stack(biases), 1) / tf.reduce_sum(w)
    return dict(kernel=model["kernel"] + SERVER_LR * (mean_k - model["kernel"]), bias=model["bias"] + SERVER_LR * (mean_b - model["bias"]))


@tf.function
def _vectorized_round(kernel, bias, xs, ys):
    # xs: [clients, steps, batch, 784], ys: [clients, steps, batch]
    n = tf.shape(xs)[0]
    k = tf.repeat(kernel[None], n, axis=0)
    b = tf.repeat(bias[None], n, axis=0)
    for s in tf.range(tf.shape(xs)[1]):
        x, y = xs[:, s], ys[:, s]
        with tf.GradientTape() as tape:
            tape.watch([k, b])
            probs = tf.nn.softmax(tf.einsum("cbi,cio->cbo", x, k) + b[:, None, :])
            per_client = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, probs), axis=1)
            loss = tf.reduce_sum(per_client)
        g_k, g_b = tape.gradient(loss, [k, b])
        k = k - CLIENT_LR * g_k
        b = b - CLIENT_LR * g_b
    mean_k, mean_b = tf.reduce_mean(k, axis=0), tf.reduce_mean(b, axis=0)
    return kernel + SERVER_LR * (mean_k - kernel), bias + SERVER_LR * (mean_b - bias)


def materialize_for_floor(datasets):
    xs, ys = [], []
    for ds in datasets:
        batches = list(ds.as_numpy_iterator())
        xs.append(np.stack([b["x"] for b in batches]))
        ys.append(np.stack([b["y"] for b in batches]))
    return tf.constant(np.stack(xs)), tf.constant(np.stack(ys))


# --------------------------------------------------------------------------
# Timing.


def time_rounds(run_round: Callable[[], None], rounds: int) -> float:
    """The median seconds of ``rounds`` calls, after a warm-up call (tracing, compilation, first materialization)."""
    return interleaved_medians({"": run_round}, rounds)[""]


def interleaved_medians(runners: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """The median seconds of each runner over ``repeats`` turns, the runners taking turns (after a warm-up each)."""
    for run in runners.values():
        run()
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def zero_model():
    return collections.OrderedDict(kernel=np.zeros((784, 10), np.float32), bias=np.zeros(10, np.float32))


_vectorized_round_xla = tf.function(_vectorized_round.python_function, jit_compile=True)


def bench_cohort(n: int, rounds: int, include_reference: bool, xla: bool = False, plain: bool = True) -> Dict[str, float]:
    arrays = make_client_arrays(n)
    datasets = [preprocess(a) for a in arrays]
    xs, ys = materialize_for_floor(datasets)
    z = zero_model()
    # The fast variants take turns round by round, so that a slower stretch of the machine falls on all of them.
    fast: Dict[str, Callable[[], object]] = {"hand-vectorized floor": lambda: _vectorized_round(z["kernel"], z["bias"], xs, ys)}
    for strategy in ("auto", "vectorized", "sequential"):
        executor = TensorFlowExecutor(strategy=strategy)
        fast[f"fedcore TF executor, {strategy}"] = (
            lambda executor=executor: execute(fedavg_round, (z, datasets), {}, executor=executor))
    if xla:  # XLA-compiled rows: the floor and the executor with jit_compile=True
        fast["hand-vectorized floor, XLA"] = lambda: _vectorized_round_xla(z["kernel"], z["bias"], xs, ys)
        xla_executor = TensorFlowExecutor(jit_compile=True)
        fast["fedcore TF executor, auto, jit_compile=True"] = (
            lambda: execute(fedavg_round, (z, datasets), {}, executor=xla_executor))
    timed = interleaved_medians(fast, rounds)
    results: Dict[str, float] = {"hand-vectorized floor": timed.pop("hand-vectorized floor")}
    if plain:  # tens of times slower: timed on its own
        results["plain TF loop (per-client tf.function)"] = time_rounds(lambda: plain_tf_round(z, datasets), rounds)
    results.update(timed)
    if include_reference:
        ref = fedcore.ReferenceExecutor()
        results["fedcore reference executor"] = time_rounds(
            lambda: execute(fedavg_round, (z, datasets), {}, executor=ref), rounds
        )
    return results


def rss_mib() -> float:
    """Resident set size now, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_over_rounds(n: int, rounds: int, warmup: int = 10) -> List[str]:
    """Chains ``rounds`` FedAvg rounds on the TF executor and reports resident memory."""
    datasets = [preprocess(a) for a in make_client_arrays(n, seed=1)]
    executor = TensorFlowExecutor()
    model = zero_model()
    rows = []
    for r in range(1, rounds + 1):
        model = execute(fedavg_round, (model, datasets), {}, executor=executor)
        if r == warmup:
            start_peak, start_now = peak_rss_mib(), rss_mib()
        if r % 50 == 0 or r == rounds:
            rows.append(f"| {r} | {rss_mib():.0f} | {peak_rss_mib():.0f} |")
            print(rows[-1], flush=True)
    growth = 100 * (peak_rss_mib() - start_peak) / start_peak
    return [
        f"Resident memory over {rounds} chained rounds at {n} clients (fedcore TF executor, auto strategy); "
        f"after the {warmup}-round warm-up: {start_now:.0f} MiB now, {start_peak:.0f} MiB peak.",
        "",
        "| round | RSS (MiB) | peak RSS (MiB) |",
        "|---:|---:|---:|",
        *rows,
        "",
        f"Peak RSS growth from round {warmup} to round {rounds}: {growth:+.1f}% (target: at most +5%). "
        f"Traces of the round program: {executor.trace_count}.",
    ]


def machine() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s): {', '.join(g.name for g in gpus)}" if gpus else "CPU only"
    return (f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, {device}, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, oneDNN {'on' if onednn_on() else 'off'}")


SEED = "Seed workload: "  # this benchmark's section headings: "## Seed workload: <machine>"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="*", default=[3, 10, 100, 1000],
                        help="clients per round to time; none keeps this machine's last table and redoes the memory check")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--xla", action="store_true", help="also time the floor and the executor compiled with XLA")
    parser.add_argument("--reference-max", type=int, default=100, help="largest cohort to time the reference executor on")
    parser.add_argument("--plain-max", type=int, default=1000, help="largest cohort to time the plain per-client loop on")
    parser.add_argument("--rss-rounds", type=int, default=200, help="rounds of the memory check (0 skips it)")
    parser.add_argument("--rss-clients", type=int, default=100)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md"))
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:  # the memory check, alone in a fresh process so that its peak is its own
        print("\n".join(["<<<"] + rss_over_rounds(args.rss_clients, args.rss_rounds) + [">>>"]))
        return 0
    # The memory check first, in its own process: the cohorts' timings don't inflate its peak.
    memory = memory_check(args.rss_clients, args.rss_rounds) if args.rss_rounds else []
    if not args.cohorts:
        section = previous_table(args.out, machine())
        _report.write_section(f"## {SEED}{machine()}\n", "\n".join([section.rstrip(), "", *memory, ""]), args.out)
        return 0
    command = "python benchmarks/fedavg_round.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "| clients | executor | s / round | ms / client | × floor |",
        "|---:|---|---:|---:|---:|",
    ]
    for n in args.cohorts:
        results = bench_cohort(n, args.rounds, n <= args.reference_max, args.xla, n <= args.plain_max)
        floor = results["hand-vectorized floor"]
        for name, seconds in results.items():
            row = f"| {n} | {name} | {seconds:.4f} | {1000 * seconds / n:.3f} | {seconds / floor:.2f} |"
            lines.append(row)
            print(row, flush=True)
    text = "\n".join(lines)
    print(text)
    section = "\n".join(
        [f"## {SEED}{machine()}", "", f"Generated by `{command.strip()}`.", "", text, "", *memory, ""]
    )
    _report.write_section(f"## {SEED}{machine()}\n", section, args.out)
    return 0


def memory_check(clients: int, rounds: int) -> List[str]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", f"--rss-clients={clients}", f"--rss-rounds={rounds}"],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.split("<<<\n", 1)[1].split("\n>>>", 1)[0].splitlines()


def previous_table(path: str, machine_name: str) -> str:
    """This machine's section of ``path`` up to its memory check."""
    with open(path) as f:
        body = f.read()
    for part in body.split("\n## ")[1:]:
        if part.startswith(SEED + machine_name + "\n"):
            return "## " + part.split("\nResident memory", 1)[0]
    raise SystemExit(f"{path} has no table for this machine ({machine_name}); time some cohorts first")


if __name__ == "__main__":
    sys.exit(main())

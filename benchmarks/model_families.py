"""Seconds per FedAvg round for a CNN and a GRU client model: fedcore's strategies against hand-written floors.

Models (Keras 3, trained by ``fedcore.learning.build_federated_averaging_process``
over ``fedcore.learning.from_keras_model``, client SGD at 0.02, server SGD at 1.0):

* **CNN**, the EMNIST CNN of the FedAvg paper: conv 5x5x32 (same, relu),
  max-pool 2, conv 5x5x64 (same, relu), max-pool 2, flatten, dense 512 (relu),
  dense 10; examples float32[28,28,1], 20 per client, batch 10.
* **GRU**, the shapes of a character-level text model: int64 sequences of 50
  characters over a vocabulary of 86, Embedding(86, 8), GRU(128,
  return_sequences=True), Dense(86); 24 sequences per client, batch 8.

Each is timed on fedcore's TF executor with strategy auto, vectorized and
sequential, against, in the same run:

* a **hand-vectorized floor**: every client's weights stacked on a clients
  axis, all clients' steps in one tf.function (the CNN as grouped convolutions,
  the GRU's cell as batched matmuls);
* a **graph per-client loop**: one tf.function whose loop runs the clients one
  after another over their already materialized batches (the Keras model's
  ``stateless_call``);
* a **plain per-client TF loop**: a Python loop calling a per-client
  tf.function that iterates the client's tf.data dataset.

Run by hand:  python benchmarks/model_families.py [--rounds 3] [--cnn 20 50] [--gru 10 20]
It prints a markdown table (the fastest round after a warm-up round, the
variants taking turns round by round, in wall seconds and in CPU seconds of
the process, with each figure's ratio to the hand-vectorized floor and to the
best per-client loop) and writes it to benchmarks/results/model_families.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.compiler.tf_function import onednn_on

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import cpu_model  # noqa: E402

CLIENT_LR = 0.02
SERVER_LR = 1.0

VOCAB, SEQ, EMBED, UNITS = 86, 50, 8, 128
# Why the CNN's rows move from process to process where oneDNN is on (see docs/benchmarks.md).
ONEDNN_NOTE = (
    "The CNN's figures depend on a choice TensorFlow makes per process. Whether oneDNN's graph rewrite "
    "turns Keras' max-pool gradient into `_MklNativeMaxPoolGrad` or leaves Eigen's `MaxPoolGrad` changes "
    "with `PYTHONHASHSEED`, for fedcore and for the hand-written loops alike. Profiled at 10 clients, "
    "fedcore sequential: seeds 0 and 1 ran Eigen's kernel (36 ms per round for its 40 calls, plus its "
    "ParallelFor; 0.156 / 0.150 s per round), seeds 2 and 3 oneDNN's (7.5 ms; 0.133 / 0.147 s). The graph"
    " loop ran Eigen's with seed 0, and one pool of each with seed 1. At 50 clients Eigen's kernel cost "
    "about 320 ms of thread time per round, about the whole gap between fedcore (0.678 s) and the loop "
    "(0.401 s) in that profile. Compare CNN rows only with this in mind."
)
EIGEN_NOTE = (
    "oneDNN is off in this run (TensorFlow turns it on by default only on CPUs with AVX-512 and the like; "
    "TF_ENABLE_ONEDNN_OPTS=1 turns it on): every variant runs Eigen's kernels, and the CNN's hand-vectorized "
    "floor cannot run, since TensorFlow has no CPU gradient for grouped convolutions without oneDNN. The "
    "CNN's target is then the best per-client loop's time."
)
CNN_EXAMPLES, CNN_BATCH = 20, 10
GRU_EXAMPLES, GRU_BATCH = 24, 8


# --------------------------------------------------------------------------
# Models and data.


def cnn_keras():
    k = tf.keras
    return k.Sequential([
        k.Input((28, 28, 1)),
        k.layers.Conv2D(32, 5, padding="same", activation="relu"),
        k.layers.MaxPool2D(2),
        k.layers.Conv2D(64, 5, padding="same", activation="relu"),
        k.layers.MaxPool2D(2),
        k.layers.Flatten(),
        k.layers.Dense(512, activation="relu"),
        k.layers.Dense(10),
    ])


def gru_keras():
    k = tf.keras
    return k.Sequential([
        k.Input((SEQ,), dtype="int64"),
        k.layers.Embedding(VOCAB, EMBED),
        k.layers.GRU(UNITS, return_sequences=True),
        k.layers.Dense(VOCAB),
    ])


FAMILIES = {
    "cnn": dict(
        keras=cnn_keras, examples=CNN_EXAMPLES, batch=CNN_BATCH,
        spec=collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32), y=tf.TensorSpec([None], tf.int32)),
    ),
    "gru": dict(
        keras=gru_keras, examples=GRU_EXAMPLES, batch=GRU_BATCH,
        spec=collections.OrderedDict(x=tf.TensorSpec([None, SEQ], tf.int64), y=tf.TensorSpec([None, SEQ], tf.int64)),
    ),
}


def client_arrays(family: str, n: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    m = FAMILIES[family]["examples"]
    if family == "cnn":
        return [dict(x=rng.random((m, 28, 28, 1), dtype=np.float32), y=rng.integers(0, 10, m).astype(np.int32))
                for _ in range(n)]
    return [dict(x=rng.integers(0, VOCAB, (m, SEQ)), y=rng.integers(0, VOCAB, (m, SEQ))) for _ in range(n)]


def datasets(family: str, arrays) -> List[tf.data.Dataset]:
    b = FAMILIES[family]["batch"]
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(**a)).batch(b) for a in arrays]


def loss_fn(y, logits):
    return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


# --------------------------------------------------------------------------
# fedcore.


def fedcore_round(family: str, strategy: str, data):
    spec = FAMILIES[family]["spec"]

    def model_fn():
        return learning.from_keras_model(FAMILIES[family]["keras"](), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=spec)

    executor = TensorFlowExecutor(strategy=strategy)
    with fedcore.execution_context(executor):
        process = learning.build_federated_averaging_process(
            model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(CLIENT_LR),
            server_optimizer_fn=lambda: tf.keras.optimizers.SGD(SERVER_LR))
        state = [process.initialize()]

    def run():
        with fedcore.execution_context(executor):
            state[0], _ = process.next(state[0], data)

    return run, executor


# --------------------------------------------------------------------------
# Per-client loops over a Keras model's stateless_call.


def own_function(fn):
    """``fn`` called as a function of its own, not inlined into the loop around it.

    oneDNN's graph rewrite gives a max-pool's gradient its fast kernel only
    where it meets the forward pool first, and in a loop's (cyclic) graph the
    order it walks varies from process to process: Eigen's kernel, several
    times slower, ran in some.  The floors' CNN steps are called this way, as
    fedcore calls a step that max-pools, so that neither side draws the slow kernel.
    """
    return tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})


def _sgd_steps(model, weights, non_trainable, xs, ys, separate=False):
    """SGD over one client's batches xs [S, B, ...], ys [S, B, ...]; returns the new weights."""
    def step(ws, x, y):
        with tf.GradientTape() as tape:
            tape.watch(ws)
            logits, _ = model.stateless_call(ws, non_trainable, x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, ws)
        return [w - CLIENT_LR * tf.convert_to_tensor(g) for w, g in zip(ws, grads)]

    step = own_function(step) if separate else step

    def body(s, ws):
        return s + 1, list(step(list(ws), xs[s], ys[s]))

    _, out = tf.while_loop(lambda s, _: s < tf.shape(xs)[0], body, [tf.constant(0), list(weights)])
    return out


def _server(weights, client_sums, total):
    return [w + SERVER_LR * (s / total - w) for w, s in zip(weights, client_sums)]


def graph_loop_round(family: str, arrays):
    model = FAMILIES[family]["keras"]()
    b = FAMILIES[family]["batch"]
    xs = tf.constant(np.stack([a["x"].reshape((-1, b) + a["x"].shape[1:]) for a in arrays]))
    ys = tf.constant(np.stack([a["y"].reshape((-1, b) + a["y"].shape[1:]) for a in arrays]))
    weights = [tf.constant(v.numpy()) for v in model.trainable_variables]
    non_trainable = [v.numpy() for v in model.non_trainable_variables]

    @tf.function
    def round_fn(weights, xs, ys):
        n = tf.shape(xs)[0]
        examples = tf.cast(tf.shape(xs)[1] * tf.shape(xs)[2], tf.float32)

        def body(c, sums):
            new = _sgd_steps(model, weights, non_trainable, xs[c], ys[c], separate=family == "cnn")
            return c + 1, [s + examples * w for s, w in zip(sums, new)]

        _, sums = tf.while_loop(lambda c, _: c < n, body, [tf.constant(0), [tf.zeros_like(w) for w in weights]])
        return _server(weights, sums, examples * tf.cast(n, tf.float32))

    state = [weights]

    def run():
        state[0] = round_fn(state[0], xs, ys)

    return run


def plain_loop_round(family: str, data):
    model = FAMILIES[family]["keras"]()
    weights = [tf.constant(v.numpy()) for v in model.trainable_variables]
    non_trainable = [v.numpy() for v in model.non_trainable_variables]

    @tf.function
    def client(weights, ds):
        examples = tf.constant(0.0)
        for batch in ds:
            with tf.GradientTape() as tape:
                tape.watch(weights)
                logits, _ = model.stateless_call(weights, non_trainable, batch["x"], training=True)
                loss = loss_fn(batch["y"], logits)
            grads = tape.gradient(loss, weights)
            weights = tuple(w - CLIENT_LR * tf.convert_to_tensor(g) for w, g in zip(weights, grads))  # tf.data makes lists tensors
            examples += tf.cast(tf.shape(batch["y"])[0], tf.float32)
        return weights, examples

    state = [weights]

    def run():
        sums, total = [tf.zeros_like(w) for w in state[0]], 0.0
        for ds in data:
            new, m = client(tuple(state[0]), ds)
            sums = [s + m * w for s, w in zip(sums, new)]
            total += m
        state[0] = _server(state[0], sums, total)

    return run


# --------------------------------------------------------------------------
# Hand-vectorized floors: every client's weights on a clients axis.


def _stack(weights, n):
    return [tf.repeat(w[None], n, axis=0) for w in weights]


def cnn_vectorized_round(arrays):
    """Grouped convolutions: client c's channels are group c; the dense layers are batched matmuls."""
    model = cnn_keras()
    b = CNN_BATCH
    n = len(arrays)
    # [S, B, 28, 28, clients]: client c's images in channel c.
    xs = tf.constant(np.stack([a["x"].reshape((-1, b, 28, 28)) for a in arrays], axis=-1))
    ys = tf.constant(np.stack([a["y"].reshape((-1, b)) for a in arrays], axis=0))  # [clients, S, B]
    weights = [tf.constant(v.numpy()) for v in model.trainable_variables]

    def grouped(w):  # [clients, 5, 5, in, out] -> [5, 5, in, clients * out]
        c, kh, kw, i, o = w.shape
        return tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), [kh, kw, i, c * o])

    def forward(ws, x):
        k1, b1, k2, b2, k3, b3, k4, b4 = ws
        h = tf.nn.relu(tf.nn.conv2d(x, grouped(k1), 1, "SAME") + tf.reshape(b1, [-1]))
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.conv2d(h, grouped(k2), 1, "SAME") + tf.reshape(b2, [-1]))
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")  # [B, 7, 7, clients * 64]
        h = tf.reshape(tf.transpose(tf.reshape(h, [b, 7, 7, n, 64]), [3, 0, 1, 2, 4]), [n, b, 7 * 7 * 64])
        h = tf.nn.relu(tf.einsum("cbi,cio->cbo", h, k3) + b3[:, None])
        return tf.einsum("cbi,cio->cbo", h, k4) + b4[:, None]

    @own_function
    def step(ws, x, y):
        with tf.GradientTape() as tape:
            tape.watch(ws)
            logits = forward(ws, x)
            loss = tf.reduce_sum(tf.reduce_mean(
                tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True), axis=1))
        grads = tape.gradient(loss, ws)
        return [w - CLIENT_LR * g for w, g in zip(ws, grads)]

    @tf.function
    def round_fn(weights, xs, ys):
        ws = _stack(weights, n)
        for s in tf.range(tf.shape(xs)[0]):
            ws = list(step(ws, xs[s], ys[:, s]))
        return [w + SERVER_LR * (tf.reduce_mean(c, axis=0) - w) for w, c in zip(weights, ws)]

    state = [weights]

    def run():
        state[0] = round_fn(state[0], xs, ys)

    return run


def gru_vectorized_round(arrays):
    """Keras's GRU cell (reset_after) written with batched matmuls over the clients axis, a scan over time."""
    model = gru_keras()
    b = GRU_BATCH
    n = len(arrays)
    xs = tf.constant(np.stack([a["x"].reshape((-1, b, SEQ)) for a in arrays], axis=1))  # [S, clients, B, T]
    ys = tf.constant(np.stack([a["y"].reshape((-1, b, SEQ)) for a in arrays], axis=1))
    weights = [tf.constant(v.numpy()) for v in model.trainable_variables]

    def forward(ws, x):
        emb, kernel, recurrent, bias, dk, db = ws
        e = tf.gather(emb, x, batch_dims=1)  # [clients, B, T, E]
        inputs = tf.einsum("cbte,ceg->tcbg", e, kernel) + bias[:, 0][None, :, None]  # [T, clients, B, 3U]

        def cell(h, x_t):
            x_z, x_r, x_h = tf.split(x_t, 3, axis=-1)
            inner = tf.matmul(h, recurrent) + bias[:, 1][:, None]
            h_z, h_r, h_h = tf.split(inner, 3, axis=-1)
            z = tf.sigmoid(x_z + h_z)
            r = tf.sigmoid(x_r + h_r)
            hh = tf.tanh(x_h + r * h_h)
            return z * h + (1 - z) * hh

        hs = tf.scan(cell, inputs, initializer=tf.zeros([n, b, UNITS]))  # [T, clients, B, U]
        return tf.einsum("tcbu,cuv->cbtv", hs, dk) + db[:, None, None]

    @tf.function
    def round_fn(weights, xs, ys):
        ws = _stack(weights, n)
        for s in tf.range(tf.shape(xs)[0]):
            with tf.GradientTape() as tape:
                tape.watch(ws)
                logits = forward(ws, xs[s])
                per = tf.keras.losses.sparse_categorical_crossentropy(ys[s], logits, from_logits=True)
                loss = tf.reduce_sum(tf.reduce_mean(per, axis=[1, 2]))
            grads = tape.gradient(loss, ws)
            ws = [w - CLIENT_LR * tf.convert_to_tensor(g) for w, g in zip(ws, grads)]
        return [w + SERVER_LR * (tf.reduce_mean(c, axis=0) - w) for w, c in zip(weights, ws)]

    state = [weights]

    def run():
        state[0] = round_fn(state[0], xs, ys)

    return run


# --------------------------------------------------------------------------
# Timing.


def time_interleaved(runners: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, Tuple[float, float]]:
    """Each runner's fastest round after a warm-up round, in wall seconds and in this process's CPU seconds.

    On a shared machine the load changes from minute to minute: the runners
    take turns round by round, so that each meets the same load, and the
    fastest round is the least disturbed one.  CPU time (all threads) is what
    the work itself cost, whatever else ran on the machine.
    """
    best: Dict[str, List[float]] = {}
    for name, run_round in list(runners.items()):
        try:
            run_round()  # warm-up: tracing, compilation, first materialization
        except tf.errors.InvalidArgumentError as e:  # TF has no kernel for it on this machine
            lines = [line.strip() for line in e.message.splitlines()]
            UNAVAILABLE[name] = [line for line in lines if line and not line.startswith(("[[", "File "))][-1]
            del runners[name]
            continue
        best[name] = [float("inf"), float("inf")]
    for _ in range(rounds):
        for name, run_round in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run_round()
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.process_time() - cpu)
    return {name: (w, c) for name, (w, c) in best.items()}


FLOOR = "hand-vectorized floor"
# Variants TensorFlow cannot run on this machine, and why: grouped convolutions' gradients, which the CNN's
# floor needs, have a CPU kernel only where oneDNN is on (TensorFlow turns it on by default only on CPUs
# with AVX-512 and the like; TF_ENABLE_ONEDNN_OPTS=1 turns it on elsewhere).
UNAVAILABLE: Dict[str, str] = {}
GRAPH_LOOP = "graph per-client loop (one tf.function)"
PLAIN_LOOP = "plain per-client TF loop (tf.data)"


def bench(family: str, n: int, rounds: int):
    arrays = client_arrays(family, n)
    data = datasets(family, arrays)
    runners: Dict[str, Callable[[], None]] = {
        FLOOR: cnn_vectorized_round(arrays) if family == "cnn" else gru_vectorized_round(arrays),
        GRAPH_LOOP: graph_loop_round(family, arrays),
        PLAIN_LOOP: plain_loop_round(family, data),
    }
    chosen, executors = {}, {}
    for strategy in ("auto", "vectorized", "sequential"):
        run, executor = fedcore_round(family, strategy, data)
        try:
            run()  # the first round compiles; strategy='vectorized' refuses client work it cannot run
        except fedcore.ExecutionError as e:
            chosen[strategy] = str(e)
            continue
        runners[f"fedcore TF executor, {strategy}"] = run
        executors[strategy] = executor
    results: Dict[str, Any] = dict(time_interleaved(runners, rounds))
    for strategy, executor in executors.items():
        # The first choice is the clients' training; the others are the small metric and weight maps.
        chosen[strategy] = str(executor.strategy_report[0])
    for name in [FLOOR, GRAPH_LOOP, PLAIN_LOOP] + [f"fedcore TF executor, {s}" for s in ("auto", "vectorized", "sequential")]:
        results.setdefault(name, None)
    order = [FLOOR, GRAPH_LOOP, PLAIN_LOOP] + [f"fedcore TF executor, {s}" for s in ("auto", "vectorized", "sequential")]
    return {k: results[k] for k in order}, chosen


def ratio(x: float, floor: float) -> str:
    return "–" if floor != floor else f"{x / floor:.2f}"  # no floor (nan): it cannot run here


def machine() -> str:
    return (f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, oneDNN {'on' if onednn_on() else 'off'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn", type=int, nargs="*", default=[20, 50], help="cohort sizes for the CNN")
    parser.add_argument("--gru", type=int, nargs="*", default=[10, 20], help="cohort sizes for the GRU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "model_families.md"))
    args = parser.parse_args(argv)
    command = "python benchmarks/model_families.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "| model | clients | executor | s / round | × floor | × best per-client loop | CPU s / round | × floor (CPU) | × best loop (CPU) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for family, cohorts in (("cnn", args.cnn), ("gru", args.gru)):
        for n in cohorts:
            results, chosen = bench(family, n, args.rounds)
            floor = results[FLOOR] or (float("nan"), float("nan"))
            loop = [min(results[GRAPH_LOOP][k], results[PLAIN_LOOP][k]) for k in (0, 1)]
            for name, times in results.items():
                if times is None:
                    why = "cannot run here" if name in UNAVAILABLE else "refused"
                    row = f"| {family.upper()} | {n} | {name} | {why} | | | | | |"
                else:
                    (w, c) = times
                    row = (f"| {family.upper()} | {n} | {name} | {w:.4f} | {ratio(w, floor[0])} | {w / loop[0]:.2f} "
                           f"| {c:.4f} | {ratio(c, floor[1])} | {c / loop[1]:.2f} |")
                lines.append(row)
                print(row, flush=True)
            notes.append(f"- {family.upper()} at {n} clients, auto: `{chosen['auto']}`")
            for name, why in UNAVAILABLE.items():
                notes.append(f"- {family.upper()} at {n} clients, {name}: TensorFlow cannot run it on this machine: `{why}`")
            UNAVAILABLE.clear()
            if results["fedcore TF executor, vectorized"] is None:
                notes.append(f"- {family.upper()} at {n} clients, vectorized: `{chosen['vectorized']}`")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    text = "\n".join(lines)
    section = "\n".join([
        f"## Model families: {machine()}", "", f"Generated by `{command.strip()}` (load average at the end: {' '.join(load)}).",
        "", text, "", *notes, "", ONEDNN_NOTE if onednn_on() else EIGEN_NOTE, "",
    ])
    print(section)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per FedAvg round and per federated evaluation on ragged cohorts.

Real federated data is long-tailed: some clients hold a handful of examples,
some several hundred.  Client sizes here are drawn from a lognormal with
median 90 (sigma 0.8), clipped to [5, 450], seeded; each client's data goes
through the seed tutorial's pipeline (repeat 10, flatten to 784, shuffle 500,
batch 20) and trains the seed model (Dense 784 -> 10, softmax, zero initial
weights; client SGD 0.02, server SGD 1.0; the mean weighted by examples).

The floor is hand-written TensorFlow that knows the model: every client's SGD
steps on a clients axis, clients sorted by step count, finished clients
retired from the batch, and each partial last batch folded into the same step
with a per-example mask.  The evaluation floor runs the model over all
clients' examples at once (one matmul); the Keras evaluation also has its own
floor, the same Keras model, loss and accuracy run once over all examples.
Each fedcore figure is a ratio to
the floor measured in the same run.

Run by hand:  python benchmarks/ragged_round.py [--cohorts 100 500] [--rounds 5] [--write]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _report  # noqa: E402
import fedavg_round as seed  # noqa: E402  (the seed workload's model, pipeline and helpers)

import fedcore  # noqa: E402
from fedcore.runtime.execution import execute  # noqa: E402
from fedcore.runtime.tensorflow import TensorFlowExecutor  # noqa: E402

MEDIAN, SIGMA, LOW, HIGH = 90, 0.8, 5, 450
EVAL_BATCH = 20
EVAL_REPEATS = 40  # an evaluation takes milliseconds: its figures are medians over this many turns


def client_sizes(num_clients: int, seed_value: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed_value)
    return np.clip(np.round(rng.lognormal(np.log(MEDIAN), SIGMA, num_clients)), LOW, HIGH).astype(int)


def client_arrays(num_clients: int, seed_value: int = 0) -> List[Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed_value + 1)
    return [
        dict(pixels=rng.random((int(n), 28, 28), dtype=np.float32), label=rng.integers(0, 10, int(n)).astype(np.int32))
        for n in client_sizes(num_clients, seed_value)
    ]


# --------------------------------------------------------------------------
# The floor: sorted clients, finished ones retired, partial batches masked.


def floor_inputs(datasets) -> tuple:
    """One pass of every client's pipeline, as flat examples in pass order, sorted by step count."""
    xs, ys, counts = [], [], []
    for ds in datasets:
        batches = list(ds.as_numpy_iterator())
        xs.append(np.concatenate([b["x"] for b in batches]))
        ys.append(np.concatenate([b["y"] for b in batches]))
        counts.append(len(ys[-1]))
    order = np.argsort(-np.asarray(counts), kind="stable")
    counts = np.asarray(counts, np.int64)[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    x = np.concatenate([xs[i] for i in order])
    y = np.concatenate([ys[i] for i in order])
    return tuple(tf.constant(a) for a in (x, y, starts, counts))


@tf.function
def floor_round(kernel, bias, x, y, starts, counts):
    b = seed.BATCH
    steps = (counts + b - 1) // b
    last = tf.size(y, out_type=tf.int64) - 1
    total = tf.cast(tf.reduce_sum(counts), tf.float32)

    def running(s):
        return tf.reduce_sum(tf.cast(steps > s, tf.int32))

    k0 = running(0)
    ks = tf.repeat(kernel[None], k0, axis=0)
    bs = tf.repeat(bias[None], k0, axis=0)
    sum_k = tf.zeros_like(kernel)
    sum_b = tf.zeros_like(bias)

    def body(s, ks, bs, sum_k, sum_b):
        k = tf.shape(ks)[0]
        pos = tf.cast(s, tf.int64) * b + tf.range(b, dtype=tf.int64)[None, :]
        mask = tf.cast(pos < counts[:k, None], tf.float32)
        rows = tf.minimum(starts[:k, None] + pos, last)
        xb, yb = tf.gather(x, rows), tf.gather(y, rows)
        with tf.GradientTape() as tape:
            tape.watch([ks, bs])
            probs = tf.nn.softmax(tf.einsum("cbi,cio->cbo", xb, ks) + bs[:, None, :])
            ce = tf.keras.losses.sparse_categorical_crossentropy(yb, probs)
            loss = tf.reduce_sum(tf.reduce_sum(ce * mask, 1) / tf.reduce_sum(mask, 1))
        gk, gb = tape.gradient(loss, [ks, bs])
        ks, bs = ks - seed.CLIENT_LR * gk, bs - seed.CLIENT_LR * gb
        k_next = running(tf.cast(s, tf.int64) + 1)
        w = tf.cast(counts[k_next:k], tf.float32)
        sum_k += tf.tensordot(w, ks[k_next:], 1)
        sum_b += tf.tensordot(w, bs[k_next:], 1)
        return s + 1, ks[:k_next], bs[:k_next], sum_k, sum_b

    _, _, _, sum_k, sum_b = tf.while_loop(
        lambda s, ks, *_: tf.shape(ks)[0] > 0, body, (tf.constant(0), ks, bs, sum_k, sum_b),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, 784, 10]), tf.TensorShape([None, 10]),
                          tf.TensorShape([784, 10]), tf.TensorShape([10])))
    mean_k, mean_b = sum_k / total, sum_b / total
    return kernel + seed.SERVER_LR * (mean_k - kernel), bias + seed.SERVER_LR * (mean_b - bias)


# --------------------------------------------------------------------------
# Federated evaluation on fedcore's core API, and its floor.

EVAL_BATCH_TYPE = seed.BATCH_TYPE
METRICS_TYPE = fedcore.to_type(collections.OrderedDict(loss=tf.float32, correct=tf.float32, count=tf.float32))


@fedcore.tf_computation(seed.MODEL_TYPE)
def start_metrics(model):
    return collections.OrderedDict(loss=tf.constant(0.0), correct=tf.constant(0.0), count=tf.constant(0.0))


@fedcore.tf_computation(seed.MODEL_TYPE, METRICS_TYPE, EVAL_BATCH_TYPE)
def evaluate_batch(model, metrics, batch):
    probs = tf.nn.softmax(tf.matmul(batch["x"], model["kernel"]) + model["bias"])
    ce = tf.keras.losses.sparse_categorical_crossentropy(batch["y"], probs)
    hits = tf.cast(tf.equal(tf.argmax(probs, 1, output_type=tf.int32), batch["y"]), tf.float32)
    return collections.OrderedDict(loss=metrics["loss"] + tf.reduce_sum(ce), correct=metrics["correct"] + tf.reduce_sum(hits),
                                   count=metrics["count"] + tf.cast(tf.size(batch["y"]), tf.float32))


EVAL_STATE_TYPE = fedcore.to_type(collections.OrderedDict(model=seed.MODEL_TYPE, metrics=METRICS_TYPE))


def _eval_step(state, batch):
    return collections.OrderedDict(model=state["model"], metrics=evaluate_batch(state["model"], state["metrics"], batch))


eval_step = fedcore.tf_computation(_eval_step, EVAL_STATE_TYPE, EVAL_BATCH_TYPE)


@fedcore.tf_computation(EVAL_STATE_TYPE, fedcore.StructType([EVAL_BATCH_TYPE, fedcore.TensorType(tf.bool, [None])]))
def eval_padded_batch(state, padded):
    """``eval_step`` on the rows of a padded batch where the mask is True (``fedcore.with_masked_form``)."""
    batch, real = padded[0], padded[1]
    model, metrics = state["model"], state["metrics"]
    probs = tf.nn.softmax(tf.matmul(batch["x"], model["kernel"]) + model["bias"])
    weight = tf.cast(real, tf.float32)
    ce = tf.keras.losses.sparse_categorical_crossentropy(batch["y"], probs)
    hits = tf.cast(tf.equal(tf.argmax(probs, 1, output_type=tf.int32), batch["y"]), tf.float32)
    return collections.OrderedDict(model=model, metrics=collections.OrderedDict(
        loss=metrics["loss"] + tf.reduce_sum(weight * ce), correct=metrics["correct"] + tf.reduce_sum(weight * hits),
        count=metrics["count"] + tf.reduce_sum(weight)))


# The same step again, with a masked form: its partial last batches run in one call (docs/performance.md).
eval_step_with_masked_form = fedcore.with_masked_form(
    fedcore.tf_computation(_eval_step, EVAL_STATE_TYPE, EVAL_BATCH_TYPE), eval_padded_batch)


@fedcore.tf_computation(seed.MODEL_TYPE)
def start_eval(model):
    return collections.OrderedDict(model=model, metrics=start_metrics(model))


def _federated_eval(step):
    @fedcore.federated_computation(seed.MODEL_TYPE, fedcore.SequenceType(EVAL_BATCH_TYPE))
    def client_evaluation(model, batches):
        return fedcore.sequence_reduce(batches, start_eval(model), step).metrics

    @fedcore.federated_computation(fedcore.type_at_server(seed.MODEL_TYPE),
                                   fedcore.type_at_clients(fedcore.SequenceType(EVAL_BATCH_TYPE)))
    def federated_eval(model, data):
        metrics = fedcore.federated_map(client_evaluation, fedcore.federated_zip([fedcore.federated_broadcast(model), data]))
        return fedcore.federated_sum(metrics)

    return federated_eval


federated_eval = _federated_eval(eval_step)
federated_eval_with_masked_form = _federated_eval(eval_step_with_masked_form)


def eval_pipeline(arrays: Dict[str, np.ndarray]) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    return ds.map(lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [784]), y=e["label"])).batch(EVAL_BATCH)


@tf.function
def eval_floor(kernel, bias, x, y):
    probs = tf.nn.softmax(tf.matmul(x, kernel) + bias)
    ce = tf.keras.losses.sparse_categorical_crossentropy(y, probs)
    hits = tf.cast(tf.equal(tf.argmax(probs, 1, output_type=tf.int32), y), tf.float32)
    return tf.reduce_sum(ce), tf.reduce_sum(hits), tf.cast(tf.size(y), tf.float32)


@tf.function
def _client_eval(kernel, bias, ds):
    loss, correct, count = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
    for batch in ds:
        probs = tf.nn.softmax(tf.matmul(batch["x"], kernel) + bias)
        loss += tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(batch["y"], probs))
        correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, 1, output_type=tf.int32), batch["y"]), tf.float32))
        count += tf.cast(tf.size(batch["y"]), tf.float32)
    return loss, correct, count


def plain_eval(model, datasets):
    return [sum(v) for v in zip(*[_client_eval(model["kernel"], model["bias"], ds) for ds in datasets])]


# --------------------------------------------------------------------------


def trained_model():
    """A model that is not zero, so that evaluation's numbers mean something."""
    rng = np.random.default_rng(3)
    return collections.OrderedDict(kernel=rng.normal(0, 0.01, (784, 10)).astype(np.float32), bias=np.zeros(10, np.float32))


def check_equal_to_floor(n: int) -> float:
    """The largest difference between fedcore's round and the floor's, on data in a fixed order (no shuffle)."""
    datasets = [tf.data.Dataset.from_tensor_slices(a).repeat(seed.EPOCHS).map(
        lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [784]), y=e["label"])).batch(seed.BATCH)
        for a in client_arrays(n)]
    z = seed.zero_model()
    fk, fb = floor_round(z["kernel"], z["bias"], *floor_inputs(datasets))
    got = execute(seed.fedavg_round, (z, datasets), {}, executor=TensorFlowExecutor(strategy="vectorized"))
    return float(max(np.max(np.abs(got["kernel"] - fk.numpy())), np.max(np.abs(got["bias"] - fb.numpy()))))


def bench_training(n: int, rounds: int, sequential_max: int, plain_max: int) -> Dict[str, float]:
    arrays = client_arrays(n)
    datasets = [seed.preprocess(a) for a in arrays]
    z = seed.zero_model()
    x, y, starts, counts = floor_inputs(datasets)
    fast: Dict[str, Callable[[], object]] = {
        "hand-written floor (sorted, retire finished, masked last batch)":
            lambda: floor_round(z["kernel"], z["bias"], x, y, starts, counts)}
    for strategy in ("auto", "vectorized", "sequential"):
        if strategy == "sequential" and n > sequential_max:
            continue
        executor = TensorFlowExecutor(strategy=strategy)
        fast[f"fedcore TF executor, {strategy}"] = (
            lambda executor=executor: execute(seed.fedavg_round, (z, datasets), {}, executor=executor))
    results = seed.interleaved_medians(fast, rounds)
    if n <= plain_max:  # seconds a round: timed on its own, after the others
        results["plain TF loop (per-client tf.function)"] = seed.time_rounds(
            lambda: seed.plain_tf_round(z, datasets), rounds)
    return results


def bench_evaluation(n: int, rounds: int) -> Dict[str, float]:
    arrays = client_arrays(n)
    datasets = [eval_pipeline(a) for a in arrays]
    model = trained_model()
    x = tf.constant(np.concatenate([a["pixels"].reshape(-1, 784) for a in arrays]))
    y = tf.constant(np.concatenate([a["label"] for a in arrays]))
    expected = [float(v) for v in eval_floor(model["kernel"], model["bias"], x, y)]
    fast: Dict[str, Callable[[], object]] = {
        "floor (one matmul over all examples)": lambda: eval_floor(model["kernel"], model["bias"], x, y)}
    for strategy in ("auto", "sequential"):
        executor = TensorFlowExecutor(strategy=strategy)
        got = execute(federated_eval, (model, datasets), {}, executor=executor)
        np.testing.assert_allclose([got["loss"], got["correct"], got["count"]], expected, rtol=1e-4)
        fast[f"fedcore TF executor, {strategy}"] = (
            lambda executor=executor: execute(federated_eval, (model, datasets), {}, executor=executor))
    masked_executor = TensorFlowExecutor()
    got = execute(federated_eval_with_masked_form, (model, datasets), {}, executor=masked_executor)
    np.testing.assert_allclose([got["loss"], got["correct"], got["count"]], expected, rtol=1e-4)
    fast["fedcore TF executor, auto, the step with a masked form"] = (
        lambda: execute(federated_eval_with_masked_form, (model, datasets), {}, executor=masked_executor))
    keras_floor = keras_eval_floor(model)
    np.testing.assert_allclose([float(v) for v in keras_floor(x, y)], expected, rtol=1e-4)
    fast[KERAS_FLOOR] = lambda: keras_floor(x, y)
    evaluation, weights = keras_evaluation(model, datasets[0].element_spec)
    keras_executor = TensorFlowExecutor()
    got = execute(evaluation, (weights, datasets), {}, executor=keras_executor)
    np.testing.assert_allclose([got["loss"] * got["num_examples"], got["sparse_categorical_accuracy"] * got["num_examples"],
                                got["num_examples"]], expected, rtol=1e-4)
    fast["fedcore build_federated_evaluation (Keras model, metrics), auto"] = (
        lambda: execute(evaluation, (weights, datasets), {}, executor=keras_executor))
    # Calls of a few milliseconds: many repetitions, the variants taking turns, so that a slower stretch of the
    # machine falls on all of them alike.
    results = seed.interleaved_medians(fast, max(EVAL_REPEATS, rounds))
    results["plain TF loop (per-client tf.function)"] = seed.time_rounds(lambda: plain_eval(model, datasets), rounds)
    return results


def seed_keras_model():
    """The seed model as Keras: Dense 784 -> 10, softmax."""
    return tf.keras.Sequential([tf.keras.Input((784,)), tf.keras.layers.Dense(10, activation="softmax")])


KERAS_FLOOR = "Keras floor (the Keras model, its loss and accuracy over all examples at once)"


def keras_eval_floor(model):
    """The floor of the Keras evaluation: the same Keras model, loss and accuracy, run once over all examples.

    Keras' own ops cost more than the plain floor's (its accuracy's argmax
    orders -0.0 below 0.0 through a bitcast; its loss clips and takes the log of
    probabilities), so this is what fedcore's Keras evaluation adds to.
    """
    keras_model = seed_keras_model()
    keras_model.set_weights([model["kernel"], model["bias"]])
    loss = tf.keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def run(x, y):
        probs = keras_model(x, training=False)
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return loss(y, probs) * count, tf.reduce_sum(tf.keras.metrics.sparse_categorical_accuracy(y, probs)), count

    return run


def keras_evaluation(model, element_spec):
    """The same model as a Keras model, evaluated by the TFF-style API (loss and accuracy as Keras metrics)."""
    def model_fn():
        return fedcore.learning.from_keras_model(seed_keras_model(), input_spec=element_spec,
                                                 loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                                                 metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

    process = fedcore.learning.build_federated_averaging_process(model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(0.02))
    weights = process.initialize().model
    kernel_name, bias_name = weights.trainable
    weights = fedcore.learning.ModelWeights(
        trainable=collections.OrderedDict([(kernel_name, model["kernel"]), (bias_name, model["bias"])]),
        non_trainable=weights.non_trainable)
    return fedcore.learning.build_federated_evaluation(model_fn), weights


def rss_child(n: int) -> str:
    arrays = client_arrays(n)
    datasets = [seed.preprocess(a) for a in arrays]
    before = seed.rss_mib()
    model, executor = seed.zero_model(), TensorFlowExecutor()
    for _ in range(2):
        model = execute(seed.fedavg_round, (model, datasets), {}, executor=executor)
    sizes = client_sizes(n)
    real = sizes.sum() * 785 * 4 / 2**20
    padded = len(sizes) * sizes.max() * 785 * 4 / 2**20
    peak = peak_mib()
    return f"| {n} | {real:.0f} | {padded:.0f} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {(peak - before) / real:.1f} |"


def peak_mib() -> float:
    """This process's peak resident memory since it started (VmHWM: unlike ru_maxrss, not inherited
    from the parent that spawned it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return seed.peak_rss_mib()


def rss_table(cohorts: List[int]) -> List[str]:
    rows = []
    for n in cohorts:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", str(n)], check=True,
                             capture_output=True, text=True, timeout=1800).stdout
        rows.append(out.strip().splitlines()[-1])
        print(rows[-1], flush=True)
    return ["| clients | examples held (MiB) | padded to the longest (MiB) | RSS before the rounds (MiB) | peak RSS (MiB) "
            "| peak - before (MiB) | × examples held |",
            "|---:|---:|---:|---:|---:|---:|---:|", *rows]


def table(rows: Dict[int, Dict[str, float]], floor_name: str, unit: str) -> List[str]:
    lines = [f"| clients | executor | s / {unit} | × floor |", "|---:|---|---:|---:|"]
    for n, results in rows.items():
        floor = results[floor_name]
        for name, seconds in results.items():
            lines.append(f"| {n} | {name} | {seconds:.4f} | {seconds / floor:.2f} |")
    return lines


def evaluation_table(rows: Dict[int, Dict[str, float]]) -> List[str]:
    """The evaluation's times against the plain floor, and the Keras evaluation's also against the Keras floor."""
    lines = ["| clients | executor | s / evaluation | × floor | × Keras floor |", "|---:|---|---:|---:|---:|"]
    for n, results in rows.items():
        floor, keras_floor = results[next(iter(results))], results[KERAS_FLOOR]
        for name, seconds in results.items():
            keras = f"{seconds / keras_floor:.2f}" if "Keras" in name else ""
            lines.append(f"| {n} | {name} | {seconds:.4f} | {seconds / floor:.2f} | {keras} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, nargs="*", default=[100, 500])
    parser.add_argument("--eval-cohorts", type=int, nargs="*", default=[100])
    parser.add_argument("--rss-cohorts", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential-max", type=int, default=500, help="largest cohort to time the sequential strategy on")
    parser.add_argument("--plain-max", type=int, default=500, help="largest cohort to time the plain per-client loop on")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        print(rss_child(args.rss_child))
        return 0
    command = "python benchmarks/ragged_round.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = client_sizes(100)
    print(f"client sizes at 100 clients: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}", flush=True)
    print(f"largest difference between fedcore's round and the floor's on 50 clients: {check_equal_to_floor(50):.2e}",
          flush=True)
    training = {}
    for n in args.cohorts:
        training[n] = bench_training(n, args.rounds, args.sequential_max, args.plain_max)
        print("\n".join(table({n: training[n]}, next(iter(training[n])), "round")), flush=True)
    evaluation = {}
    for n in args.eval_cohorts:
        evaluation[n] = bench_evaluation(n, args.rounds)
        print("\n".join(evaluation_table({n: evaluation[n]})), flush=True)
    memory = rss_table(args.rss_cohorts) if args.rss_cohorts else []
    lines = [
        f"## Ragged cohorts ({seed.machine()})", "",
        f"Generated by `{command.strip()}`. Client sizes: lognormal, median {MEDIAN}, sigma {SIGMA}, clipped to "
        f"[{LOW}, {HIGH}], seeded (at 100 clients: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}); "
        "the seed pipeline and model. See the docstring of `benchmarks/ragged_round.py` for the floors.", "",
        "FedAvg rounds:", "", *(table(training, next(iter(next(iter(training.values())))), "round") if training else []), "",
        "Federated evaluation (loss, accuracy and count summed over clients; batches of 20, no shuffle; its "
        "reductions only add, so they run as one pass over all clients' batches: docs/performance.md; medians of "
        f"{EVAL_REPEATS} turns with the variants taking turns, the plain loop's of the rounds):", "",
        *(evaluation_table(evaluation) if evaluation else []), "",
        "Peak resident memory (VmHWM) of a fresh process that builds the cohort's datasets and runs two rounds on "
        "one TF executor (auto), measured by `python benchmarks/ragged_round.py --rss-child N`. \"Before\" already "
        "holds the datasets the caller built; what a round adds is one host copy of each client's examples (read "
        "once from tf.data), the cohort's examples concatenated for the device (one more copy, which TensorFlow "
        "uses in place on CPU through DLPack), and about one step's buffers:", "", *memory, "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        _report.write_section("## Ragged cohorts", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds to build the seed tutorial's FedAvg process and initialize it, after imports.

The model is the seed tutorial's: a Keras Sequential with one Dense(10) over
784 inputs (zero initial weights) and a softmax, wrapped by
``fedcore.learning.from_keras_model`` with sparse categorical cross-entropy
and accuracy; client SGD at 0.02, server SGD at 1.0.

Each measurement runs in a fresh Python process that first imports
TensorFlow and fedcore (not timed), then times
``build_federated_averaging_process(model_fn)`` and the first
``initialize()``, with a breakdown: Keras model construction (inside
``model_fn``), tracing of tf_computations (TensorFlow's tracing of the
traced functions, AutoGraph included), AutoGraph's source conversions (their
number, and the time inside them), and the rest (fedcore's IR, types and
passes).  The figure is the median over ``--runs`` processes.

``--library-converted`` rows time the same build with AutoGraph allowed to
convert fedcore's library code again (as every tf_computation once was), for
a before/after ratio measured in one run.

Run by hand:  python benchmarks/build_time.py [--runs 5] [--out benchmarks/results/build_time.md]
It prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(library_converted: bool) -> Dict[str, float]:
    """One measurement, in this (fresh) process."""
    import collections
    import time

    import tensorflow as tf
    from tensorflow.python.autograph.core import config as autograph_config
    from tensorflow.python.autograph.impl import api as autograph_api
    from tensorflow.python.autograph.pyct import transpiler

    import fedcore
    import fedcore.learning
    from fedcore.compiler import tf_function

    if library_converted:
        autograph_config.CONVERSION_RULES = tuple(
            r for r in autograph_config.CONVERSION_RULES if r not in tf_function._LIBRARY_RULES
        )

    totals = collections.Counter()
    depth = collections.Counter()

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            depth[key] += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[key] -= 1
                if depth[key] == 0:  # nested calls count once
                    totals[key] += time.perf_counter() - start
                totals[key + "_calls"] += 1

        setattr(owner, name, wrapper)

    timed(tf_function.TFFunction, "__init__", "tracing")
    timed(autograph_api, "_convert_actual", "autograph")
    timed(transpiler.GenericTranspiler, "transform_function", "transforms")  # cache misses: real transforms

    def create_keras_model():
        return tf.keras.models.Sequential([
            tf.keras.layers.Input(shape=(784,)),
            tf.keras.layers.Dense(10, kernel_initializer="zeros"),
            tf.keras.layers.Softmax(),
        ])

    input_spec = collections.OrderedDict(
        x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None, 1], tf.int32)
    )

    def model_fn():
        start = time.perf_counter()
        keras_model = create_keras_model()
        model = fedcore.learning.from_keras_model(
            keras_model, input_spec=input_spec, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
        totals["keras"] += time.perf_counter() - start
        totals["model_fn_calls"] += 1
        return model

    start = time.perf_counter()
    process = fedcore.learning.build_federated_averaging_process(
        model_fn,
        client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.02),
        server_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=1.0),
    )
    built = time.perf_counter()
    process.initialize()
    end = time.perf_counter()
    return dict(
        total=end - start,
        build=built - start,
        initialize=end - built,
        keras=totals["keras"],
        tracing=totals["tracing"],
        autograph=totals["autograph"],
        conversions=totals["autograph_calls"],
        transforms=totals["transforms_calls"],
        traces=totals["tracing_calls"],
        model_fn_calls=totals["model_fn_calls"],
    )


def measure(runs: int, library_converted: bool) -> List[Dict[str, float]]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, os.path.abspath(__file__), "--child"] + (["--library-converted"] if library_converted else [])
    out = []
    for _ in range(runs):
        text = subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=ROOT).stdout
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def row(name: str, results: List[Dict[str, float]]) -> str:
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    rest = med["build"] - med["keras"] - med["tracing"]
    return (f"| {name} | {med['total']:.3f} | {med['build']:.3f} | {med['initialize']:.3f} | {med['keras']:.3f} | "
            f"{med['tracing']:.3f} | {med['autograph']:.3f} | {int(med['conversions'])} | {int(med['transforms'])} | "
            f"{max(rest, 0.0):.3f} | {int(med['traces'])} | {int(med['model_fn_calls'])} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per row (the median is shown)")
    parser.add_argument("--no-before", action="store_true", help="skip the rows with fedcore's library converted")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "build_time.md"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library-converted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.library_converted)))
        return 0
    import tensorflow as tf

    before_load = loadavg()
    rows = {"fedcore (user code converted only)": measure(args.runs, False)}
    if not args.no_before:
        rows["fedcore library converted too (as before)"] = measure(args.runs, True)
    after_load = loadavg()
    command = "python benchmarks/build_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"### Build plus first initialize, seed model ({platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__})",
        "",
        f"Generated by `{command.strip()}`: median of {args.runs} fresh processes per row, seconds after imports; "
        f"load average {before_load} before, {after_load} after.",
        "",
        "| build | total (s) | build (s) | initialize (s) | Keras model (s) | tracing (s) | "
        "AutoGraph conversion (s) | conversions | source transforms | rest (s) | traces | model_fn calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] + [row(name, results) for name, results in rows.items()]
    if len(rows) == 2:
        a, b = (statistics.median(r["total"] for r in rs) for rs in rows.values())
        lines += ["", f"Ratio: {a / b:.3f} of the time with the library converted ({b / a:.1f}x faster)."]
    lines += ["", "Tracing includes AutoGraph's conversions and the Keras layers' calls inside the traces; "
              "rest is fedcore's IR, type checking and passes.", ""]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

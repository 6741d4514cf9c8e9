"""Memory of the vectorized ragged loop: a round holds about one step's buffers, not one per step;
and a cohort's examples, shared with TensorFlow in place, keep their values.

The ragged loop retires clients as their data ends and keeps their states
aside until the loop is over.  A retired state that shared the buffer of the
step it left (a slice of all k clients' states) kept that whole buffer alive:
one buffer per step, so a round's peak grew with clients times steps.  The
peak is read here from TensorFlow's own allocation records (the profiler's
trace of the round), which do not depend on what else the process holds.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, batched, values

WIDTH = 16384  # floats of state per client: 64 KiB
CLIENTS = 48
ELEMENT = fedcore.to_type((tf.float32, [None]))
STATE = fedcore.to_type((tf.float32, [WIDTH]))


@fedcore.tf_computation(STATE, ELEMENT)
def decay(state, batch):
    # Reads its own state: not a sum of increments, so the ragged loop runs it.
    return state * 0.5 + tf.reduce_sum(batch)


@fedcore.federated_computation(fedcore.SequenceType(ELEMENT))
def client(batches):
    return fedcore.sequence_reduce(batches, np.zeros([WIDTH], np.float32), decay)


@fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
def everyone(data):
    return fedcore.federated_map(client, data)


def cohort():
    # Client c has c + 1 full batches of 2: every step retires one client.
    return [tf.data.Dataset.range(2 * (c + 1)).map(lambda x: tf.cast(x, tf.float32)).batch(2) for c in range(CLIENTS)]


def expected(c):
    s = np.float32(0)
    for step in range(c + 1):
        s = s * np.float32(0.5) + np.float32(4 * step + 1)
    return s


def peak_live_bytes(logdir):
    """The most bytes TensorFlow's allocators held at once, of those allocated during the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        names, stats = plane.event_metadata, plane.stat_metadata
        for line in plane.lines:
            for e in line.events:
                kind = names[e.metadata_id].name
                if kind in ("MemoryAllocation", "MemoryDeallocation"):
                    fields = {stats[s.metadata_id].name: s.int64_value or s.uint64_value for s in e.stats}
                    events.append((line.timestamp_ns * 1000 + e.offset_ps, kind, fields["addr"],
                                   fields.get("allocation_bytes", 0)))
    assert events, "the profiler recorded no allocations: this test cannot measure"
    live, now, peak = {}, 0, 0
    for _, kind, addr, size in sorted(events):
        if kind == "MemoryAllocation":
            live[addr] = size
            now += size
            peak = max(peak, now)
        else:
            now -= live.pop(addr, 0)
    return peak


def measure_ragged_round(logdir: str) -> dict:
    """One traced round of the ragged loop: whether it ran, its results' check, and its peak bytes."""
    calls = []
    original = batched._ragged
    batched._ragged = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        executor, data = TensorFlowExecutor(strategy="vectorized"), cohort()
        with fedcore.execution_context(executor):
            first = everyone(data)  # traced and compiled outside the measured call
            tf.profiler.experimental.start(logdir)
            try:
                again = everyone(data)
            finally:
                tf.profiler.experimental.stop()
    finally:
        batched._ragged = original
    for c in (0, 1, CLIENTS // 2, CLIENTS - 1):
        np.testing.assert_allclose(again[c], np.full([WIDTH], expected(c)), rtol=1e-6)
        np.testing.assert_array_equal(first[c], again[c])
    return {"ragged_loop_ran": bool(calls), "peak": peak_live_bytes(logdir)}


def test_ragged_round_holds_about_one_step_of_states(tmp_path):
    # TensorFlow records allocations only from its BFC allocator. It is the CPU allocator where oneDNN
    # is on (by default only on CPUs with AVX-512 and the like); elsewhere this environment variable
    # asks for it, before TensorFlow starts: so the round is measured in a process of its own.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import json, sys; from tests.runtime.test_ragged_memory import measure_ragged_round; "
            "print('RESULT' + json.dumps(measure_ragged_round(sys.argv[1])))")
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    assert result["ragged_loop_ran"], "the ragged loop did not run"
    states = CLIENTS * WIDTH * 4  # every client's state once: 3 MiB
    # A handful of state-sized buffers (inputs, results, the retired states); one per step would be 48.
    assert result["peak"] < 12 * states


@given(dtype=st.sampled_from(["float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool", "object"]),
       sizes=st.lists(st.integers(0, 7), min_size=1, max_size=5), inner=st.sampled_from([(), (3,), (2, 5)]))
@settings(max_examples=40, deadline=None)
def test_a_cohorts_examples_concatenate_to_the_same_values(dtype, sizes, inner):
    # On CPU the cohort's examples are shared with TensorFlow (an aligned buffer through DLPack).
    rng = np.random.default_rng(len(sizes))
    pieces = [(rng.random((n,) + inner) * 100).astype(dtype) if dtype != "object"
              else np.array([str(x) for x in rng.integers(0, 9, (n,) + inner).ravel()], object).reshape((n,) + inner)
              for n in sizes]
    got = values._concatenated(pieces)
    expected = np.concatenate(pieces)
    if dtype == "object":
        np.testing.assert_array_equal(np.asarray(got, object), expected)
        return
    assert got.dtype.as_numpy_dtype == expected.dtype and tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected)
    # TensorFlow computes on it as on any tensor (an unaligned buffer would abort the process here).
    np.testing.assert_array_equal(tf.reshape(got, [-1]).numpy(), expected.reshape(-1))

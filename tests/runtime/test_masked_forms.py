"""A reduction step's masked form lets the vectorized strategy run every partial batch in one call.

``fedcore.with_masked_form(step, masked)`` records that ``masked(a, <p, m>)``
equals ``step(a, b)`` when ``p`` is the batch ``b`` padded with copies of its
own rows and ``m`` marks the real rows.  Where a reduction takes the map-sum
path (its step only adds), the executor pads the clients' partial last batches
to the full batch size and runs them all in one call of the masked form.
These tests pin the types it accepts, that the path is taken (a masked form
that breaks the promise shows in the result), and that results equal the
reference interpreter's, which ignores masked forms, on ragged cohorts.
"""

import collections
import contextlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor, batched

ELEMENT = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.int32, [None])))
STATE = fedcore.to_type(collections.OrderedDict(
    w=(tf.float32, [2]), total=tf.float32, count=tf.int32, means=tf.float32, hits=tf.float32))
PADDED = fedcore.StructType([ELEMENT, fedcore.TensorType(tf.bool, [None])])


def _scores(w, batch):
    return tf.linalg.matvec(batch["x"], w)


def _step(state, batch):
    scores = _scores(state["w"], batch)
    return collections.OrderedDict(
        w=state["w"], total=state["total"] + tf.reduce_sum(scores), count=state["count"] + tf.size(batch["y"]),
        # The batch's mean: its padded form must divide by the real rows only.
        means=state["means"] + tf.reduce_mean(scores),
        hits=state["hits"] + tf.reduce_sum(tf.cast(tf.cast(scores > 0, tf.int32) == batch["y"], tf.float32)))


def _masked_counting(state, padded, extra):
    batch, mask = padded[0], padded[1]
    scores = _scores(state["w"], batch)
    weight = tf.cast(mask, tf.float32)
    real = tf.reduce_sum(weight)
    return collections.OrderedDict(
        w=state["w"], total=state["total"] + tf.reduce_sum(tf.where(mask, scores, 0.0)),
        count=state["count"] + tf.reduce_sum(tf.cast(mask, tf.int32)) + extra,
        means=state["means"] + tf.reduce_sum(tf.where(mask, scores, 0.0)) / real,
        hits=state["hits"] + tf.reduce_sum(weight * tf.cast(tf.cast(scores > 0, tf.int32) == batch["y"], tf.float32)))


def _masked(state, padded):
    return _masked_counting(state, padded, 0)


def reducing(masked_step=None):
    """``<w@SERVER, {batches*}@CLIENTS> -> {state}@CLIENTS``, its step with ``masked_step`` as masked form."""
    step = fedcore.tf_computation(_step, STATE, ELEMENT)
    if masked_step is not None:
        fedcore.with_masked_form(step, fedcore.tf_computation(masked_step, STATE, PADDED))

    @fedcore.tf_computation(fedcore.TensorType(tf.float32, [2]))
    def start(w):
        return collections.OrderedDict(w=w, total=0.0, count=0, means=0.0, hits=0.0)

    @fedcore.federated_computation(fedcore.TensorType(tf.float32, [2]), fedcore.SequenceType(ELEMENT))
    def client(w, batches):
        return fedcore.sequence_reduce(batches, start(w), step)

    @fedcore.federated_computation(fedcore.type_at_server(fedcore.TensorType(tf.float32, [2])),
                                   fedcore.type_at_clients(fedcore.SequenceType(ELEMENT)))
    def everyone(w, data):
        return fedcore.federated_map(client, fedcore.federated_zip([fedcore.federated_broadcast(w), data]))

    return everyone


def client_data(sizes, batch, shuffle_seed=None):
    out = []
    for c, n in enumerate(sizes):
        rng = np.random.default_rng(c)
        ds = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            x=rng.normal(size=(n, 2)).astype(np.float32), y=rng.integers(0, 2, size=n).astype(np.int32)))
        if shuffle_seed is not None:
            ds = ds.shuffle(64, seed=shuffle_seed)
        out.append(ds.batch(batch))
    return out


def run(executor, comp, *args):
    with fedcore.execution_context(executor):
        return comp(*args)


@contextlib.contextmanager
def steps_called():
    """Within it, the list gets the name of the function of each vectorized step the executor lowers."""
    names = []
    original = batched._step

    def spying(c, op, *args, **kwargs):
        names.append(op.name)
        return original(c, op, *args, **kwargs)

    batched._step = spying
    try:
        yield names
    finally:
        batched._step = original


def assert_states_close(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for name in ("total", "means", "hits"):
            np.testing.assert_allclose(float(g[name]), float(e[name]), rtol=1e-5, atol=1e-4, err_msg=name)
        assert int(g["count"]) == int(e["count"])


W = np.asarray([0.5, -1.25], np.float32)
SIZES = [1, 19, 20, 21, 400, 0, 7]


@pytest.mark.parametrize("strategy", ["vectorized", "auto"])
def test_partial_batches_run_as_one_masked_call_and_equal_the_reference(strategy):
    everyone = reducing(_masked)
    data = client_data(SIZES, 20)
    expected = run(fedcore.ReferenceExecutor(), everyone, W, data)
    with steps_called() as names:
        got = run(TensorFlowExecutor(strategy=strategy), everyone, W, data)
    assert_states_close(got, expected)
    # The full batches by the step; every partial batch (sizes 1, 19, 1 and 7) in one masked call.
    assert names.count("_step, masked") == 1, names
    assert all(n in ("_step", "_step, masked") for n in names), names


def test_a_masked_form_that_breaks_its_promise_shows_so_the_path_is_taken():
    # Counting one too many for each padded batch: only the clients with a partial batch are off.
    everyone = reducing(lambda state, padded: _masked_counting(state, padded, 1000))
    data = client_data(SIZES, 20)
    got = run(TensorFlowExecutor(strategy="vectorized"), everyone, W, data)
    expected = run(fedcore.ReferenceExecutor(), everyone, W, data)
    assert [int(g["count"]) - int(e["count"]) for g, e in zip(got, expected)] == [1000, 1000, 0, 1000, 0, 0, 1000]


def test_shuffled_data_pads_each_clients_own_last_batch():
    everyone = reducing(_masked)
    data = client_data([3, 45, 40, 0, 61], 8, shuffle_seed=5)
    expected = run(TensorFlowExecutor(strategy="sequential"), everyone, W, data)
    with steps_called() as names:
        got = run(TensorFlowExecutor(strategy="vectorized"), everyone, W, data)
    assert "_step, masked" in names
    assert_states_close(got, expected)


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(0, 70), min_size=1, max_size=7), batch=st.integers(1, 12),
       w=st.lists(st.floats(-2.0, 2.0, width=32), min_size=2, max_size=2))
def test_masked_forms_equal_the_reference_on_random_ragged_cohorts(sizes, batch, w):
    everyone = reducing(_masked)
    data = client_data(sizes, batch)
    w = np.asarray(w, np.float32)
    expected = run(fedcore.ReferenceExecutor(), everyone, w, data)
    assert_states_close(run(TensorFlowExecutor(strategy="vectorized"), everyone, w, data), expected)


def test_with_masked_form_says_which_types_fit():
    step = fedcore.tf_computation(_step, STATE, ELEMENT)
    wrong = fedcore.tf_computation(lambda state, batch: state, STATE, ELEMENT)
    with pytest.raises(fedcore.FederatedTypeError, match=r"must have the type .*bool\[\?\]"):
        fedcore.with_masked_form(step, wrong)
    with pytest.raises(fedcore.FederatedTypeError, match="must be a tf_computation"):
        fedcore.with_masked_form(step, lambda state, padded: state)

    @fedcore.tf_computation(tf.float32, tf.float32)
    def scalar_step(total, x):
        return total + x

    @fedcore.tf_computation(tf.float32, fedcore.StructType([tf.float32, fedcore.TensorType(tf.bool, [None])]))
    def scalar_masked(total, padded):
        return total + padded[0]

    with pytest.raises(fedcore.FederatedTypeError, match=r"leading axis of examples .*float32"):
        fedcore.with_masked_form(scalar_step, scalar_masked)

    @fedcore.tf_computation(STATE)
    def not_a_step(state):
        return state

    with pytest.raises(fedcore.FederatedTypeError, match=r"\(<A,E> -> A\)"):
        fedcore.with_masked_form(not_a_step, wrong)


def test_the_same_step_with_and_without_a_masked_form_are_two_programs():
    # One executor, two steps of the same content: the one without a masked form must not get the program
    # compiled with the other's (here a broken one, so that sharing would show in the counts).
    data = client_data(SIZES, 20)
    executor = TensorFlowExecutor(strategy="vectorized")
    broken = run(executor, reducing(lambda state, padded: _masked_counting(state, padded, 1000)), W, data)
    plain = run(executor, reducing(), W, data)
    expected = run(fedcore.ReferenceExecutor(), reducing(), W, data)
    assert_states_close(plain, expected)
    assert int(broken[0]["count"]) - int(expected[0]["count"]) == 1000

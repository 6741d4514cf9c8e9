"""Client pipelines read once and replayed: the plan, the shuffle buffer and their use by the TF executor."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime.tensorflow import pipelines, values as tf_values
from fedcore.runtime.execution import execute
from fedcore.runtime.tensorflow import TensorFlowExecutor


# --------------------------------------------------------------------------
# The shuffle buffer.


def _position_frequencies(orders: np.ndarray) -> np.ndarray:
    n = orders.shape[1]
    return np.stack([np.bincount(orders[:, p], minlength=n) for p in range(n)]) / len(orders)


@pytest.mark.parametrize("n,buffer", [(1, 1), (5, 1), (7, 3), (6, 6), (4, 10), (40, 7)])
def test_orders_are_permutations_that_respect_the_buffer(n, buffer):
    orders = pipelines.buffer_shuffle_orders(n, buffer, np.random.default_rng(0), rows=200)
    assert orders.shape == (200, n)
    np.testing.assert_array_equal(np.sort(orders, axis=1), np.broadcast_to(np.arange(n), (200, n)))
    # Element i enters the buffer only after i - buffer + 1 elements have left it.
    positions = np.argsort(orders, axis=1)
    assert np.all(positions >= np.arange(n) - min(buffer, n) + 1)


def test_buffer_of_one_keeps_the_order():
    orders = pipelines.buffer_shuffle_orders(9, 1, np.random.default_rng(0), rows=3)
    np.testing.assert_array_equal(orders, np.broadcast_to(np.arange(9), (3, 9)))


def test_empty_sequences_have_empty_orders():
    assert pipelines.buffer_shuffle_orders(0, 5, np.random.default_rng(0), rows=2).shape == (2, 0)


@pytest.mark.parametrize("n,buffer", [(7, 3), (6, 2), (5, 8)])
def test_order_distribution_matches_tf_data(n, buffer):
    samples = 6000
    ours = pipelines.buffer_shuffle_orders(n, buffer, np.random.default_rng(1), rows=samples)
    ds = tf.data.Dataset.range(n).shuffle(buffer, seed=7).batch(n).repeat(samples)
    theirs = np.stack(list(ds.as_numpy_iterator()))
    a, b = _position_frequencies(ours), _position_frequencies(theirs)
    # Where tf.data never puts an element, neither do we; elsewhere the frequencies agree.
    np.testing.assert_array_equal(a == 0, b == 0)
    assert np.abs(a - b).max() < 0.035


# --------------------------------------------------------------------------
# Analyzing pipelines.


def _base(n=12):
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=np.arange(n * 2, dtype=np.float32).reshape(n, 2), y=np.arange(n, dtype=np.int32))
    )


def test_a_pipeline_without_randomness_is_static():
    assert pipelines.analyze(_base().map(lambda e: e).prefetch(1)).kind == "static"
    plan = pipelines.analyze(_base().map(lambda e: e).batch(4).prefetch(1))
    assert plan.kind == "batched"
    assert pipelines.analyze(_base().shuffle(5, reshuffle_each_iteration=False)).kind == "static"


def test_the_seed_pipeline_splits_into_base_and_plan():
    ds = _base().repeat(10).map(lambda e: e).shuffle(500).batch(20).prefetch(2)
    plan = pipelines.analyze(ds)
    assert (plan.kind, plan.repeat, plan.buffer_size, plan.batch_size, plan.drop_remainder, plan.seed) == (
        "shuffled", 10, 500, 20, False, None)
    assert pipelines.is_deterministic(plan.base)
    assert int(plan.base.cardinality()) == 12


def test_seeded_shuffles_and_drop_remainder_are_recorded():
    plan = pipelines.analyze(_base().shuffle(4, seed=3).batch(5, drop_remainder=True))
    assert plan.seed is not None and plan.drop_remainder and plan.repeat == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: _base().map(lambda e: collections.OrderedDict(x=e["x"] + tf.random.uniform([2]), y=e["y"])).batch(4),
        lambda: _base().shuffle(4).map(lambda e: e).batch(4),  # work after the shuffle
        lambda: _base().shuffle(4).repeat(2).batch(4),  # a reshuffle per repetition
        lambda: _base().shuffle(4).shuffle(3).batch(4),
    ],
    ids=["random-map", "map-after-shuffle", "repeat-after-shuffle", "two-shuffles"],
)
def test_randomness_the_plan_cannot_replay_is_read_every_time(make):
    ds = make()
    assert not pipelines.is_deterministic(ds)
    assert pipelines.analyze(ds) is None
    t = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.int32, [None])))
    assert tf_values.read(ds, t).plan is None
    assert tf_values.read(ds, t) is not tf_values.read(ds, t)  # nothing cached


def test_infinite_client_datasets_are_refused_clearly():
    t = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.int32, [None])))
    with pytest.raises(fedcore.ExecutionError, match=r"infinite .*repeat\(\)"):
        tf_values.read(_base().repeat().batch(4), t)


# --------------------------------------------------------------------------
# One pass, replayed on the host.

ELEMENT = fedcore.to_type(collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.int32, [None])))


def test_a_replayed_pass_yields_every_example_in_batches():
    ds = _base(12).repeat(2).shuffle(5).batch(5)
    batches = tf_values.client_elements(ds, ELEMENT)
    assert [len(b.y) for b in batches] == [5, 5, 5, 5, 4]
    ys = np.concatenate([b.y for b in batches])
    assert sorted(ys) == sorted(list(range(12)) * 2)
    for b in batches:  # x and y of one example stay together
        np.testing.assert_array_equal(b.x[:, 0], 2 * b.y)


def test_drop_remainder_drops_the_partial_batch():
    batches = tf_values.client_elements(_base(12).shuffle(5).batch(5, drop_remainder=True), ELEMENT)
    assert [len(b.y) for b in batches] == [5, 5]


def test_seeded_pipelines_give_the_order_of_the_epoch_they_are_given():
    def orders(ds, epochs):
        return [np.concatenate([b.y for b in tf_values.client_elements(ds, ELEMENT, epoch=e)]) for e in epochs]

    first = orders(_base().shuffle(12, seed=5).batch(4), [0, 1, 2])
    # Another dataset object, asked in another order: each epoch's order depends on nothing that ran before.
    second = orders(_base().shuffle(12, seed=5).batch(4), [2, 1, 0, 0])
    for a, b in zip(first, second[2::-1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(second[2], second[3])  # the same epoch twice: the same order
    assert not np.array_equal(first[0], first[1])  # a new epoch, a new order
    with pytest.raises(ValueError, match="epoch"):
        tf_values.client_elements(_base().shuffle(12, seed=5).batch(4), ELEMENT, epoch=-1)


def test_reads_are_cached_by_content_in_a_bounded_cache():
    cache = tf_values.DatasetCache(max_datasets=2)
    plain = lambda n=12: _base(n).map(lambda e: e).batch(4)  # noqa: E731
    first = cache.read(plain(), ELEMENT)
    assert cache.read(plain(), ELEMENT) is first  # another object built the same way: read once
    assert cache.fingerprint(plain()) == cache.fingerprint(plain()) != cache.fingerprint(plain(11))
    assert cache.read(plain(11), ELEMENT) is not first
    cache.read(plain(10), ELEMENT)
    assert cache.read(plain(), ELEMENT) is not first  # the oldest of three was dropped
    seeded = cache.fingerprint(_base().shuffle(6, seed=1).batch(4))
    assert seeded == cache.fingerprint(_base().shuffle(6, seed=1).batch(4)) != cache.fingerprint(_base().shuffle(6, seed=2).batch(4))
    # A pipeline whose graph cannot be serialized is known only by its object.
    generated = tf.data.Dataset.from_generator(lambda: iter([1.0]), output_signature=tf.TensorSpec([], tf.float32))
    assert pipelines.fingerprint(generated) is None
    assert cache.fingerprint(generated) == cache.fingerprint(generated)
    assert cache.fingerprint(generated) != cache.fingerprint(
        tf.data.Dataset.from_generator(lambda: iter([1.0]), output_signature=tf.TensorSpec([], tf.float32)))


# --------------------------------------------------------------------------
# Through the TF executor.

BATCHES = fedcore.SequenceType(ELEMENT)


@fedcore.tf_computation(fedcore.to_type(collections.OrderedDict(total=tf.float32, first=tf.int32)), ELEMENT)
def _fold(acc, batch):
    # Order-sensitive: records the first label seen.
    first = tf.where(acc["first"] < 0, batch["y"][0], acc["first"])
    return collections.OrderedDict(total=acc["total"] + tf.reduce_sum(batch["x"]), first=first)


@fedcore.tf_computation
def _start():
    return collections.OrderedDict(total=tf.constant(0.0), first=tf.constant(-1))


@fedcore.federated_computation(BATCHES)
def _client(batches):
    return fedcore.sequence_reduce(batches, _start(), _fold)


@fedcore.federated_computation(fedcore.type_at_clients(BATCHES))
def _per_client(data):
    return fedcore.federated_map(_client, data)


def _client_data(sizes, batch=4, seed=None, drop=False):
    return [_base(n).repeat(2).shuffle(6, seed=seed).batch(batch, drop_remainder=drop) for n in sizes]


@pytest.mark.parametrize("strategy", ["sequential", "vectorized", "auto"])
def test_shuffled_client_data_gives_the_reference_totals(strategy):
    data = _client_data([8, 12, 4])  # 16, 24 and 8 examples: full batches of 4
    executor = TensorFlowExecutor(strategy=strategy)
    expected = [float(2 * np.arange(2 * n).sum()) for n in (8, 12, 4)]
    for _ in range(2):
        got = execute(_per_client, (data,), {}, executor=executor)
        assert [float(g["total"]) for g in got] == pytest.approx(expected)
        assert [float(g["total"]) for g in _per_client(data)] == pytest.approx(expected)
    assert executor.trace_count == 1


def test_each_call_draws_a_new_order():
    data = _client_data([12] * 4)
    executor = TensorFlowExecutor(strategy="vectorized")
    firsts = {tuple(int(g["first"]) for g in execute(_per_client, (data,), {}, executor=executor)) for _ in range(6)}
    assert len(firsts) > 1


@pytest.mark.parametrize("strategy", ["vectorized", "auto", "sequential"])
def test_partial_batches_are_stepped_apart(strategy):
    data = _client_data([7, 5])  # 14 and 10 examples: a partial last batch each
    got = execute(_per_client, (data,), {}, executor=TensorFlowExecutor(strategy=strategy))
    assert [float(g["total"]) for g in got] == pytest.approx([2 * np.arange(14).sum(), 2 * np.arange(10).sum()])


def test_deterministic_batched_pipelines_keep_their_order_in_the_graph():
    data = [_base(n).batch(4) for n in (7, 5, 8)]
    plan = pipelines.analyze(data[0])
    assert (plan.kind, plan.batch_size, plan.buffer_size) == ("batched", 4, 1)
    got = execute(_per_client, (data,), {}, executor=TensorFlowExecutor(strategy="vectorized"))
    assert [int(g["first"]) for g in got] == [0, 0, 0]
    assert [float(g["total"]) for g in got] == pytest.approx([np.arange(2 * n).sum() for n in (7, 5, 8)])


def test_drop_remainder_pipelines_vectorize():
    data = _client_data([7, 5], drop=True)  # 3 and 2 full batches
    got = execute(_per_client, (data,), {}, executor=TensorFlowExecutor(strategy="vectorized"))
    assert [len(np.shape(g["total"])) for g in got] == [0, 0]
    assert all(float(g["total"]) > 0 for g in got)


def test_a_cohort_mixing_shuffled_and_static_pipelines_still_agrees():
    data = _client_data([8]) + [_base(6).batch(4)]
    got = execute(_per_client, (data,), {}, executor=TensorFlowExecutor())
    assert [float(g["total"]) for g in got] == pytest.approx([2 * np.arange(16).sum(), np.arange(12).sum()])
    assert int(got[1]["first"]) == 0  # the static client keeps its order


def test_seeded_client_pipelines_repeat_their_orders_in_a_fresh_process_state():
    def run():
        data = _client_data([12, 12], seed=11)
        executor = TensorFlowExecutor(strategy="vectorized")
        return [tuple(int(g["first"]) for g in execute(_per_client, (data,), {}, executor=executor)) for _ in range(4)]

    assert run() == run()

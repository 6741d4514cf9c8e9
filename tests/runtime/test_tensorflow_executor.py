"""The TensorFlow backend: conformance, compilation caching and both client strategies."""

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime.execution import execute
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.testing import conformance


@pytest.mark.parametrize("strategy", ["sequential", "auto"])
@conformance.parametrize("case")
def test_conformance(case, strategy):
    conformance.run_case(case, lambda n: TensorFlowExecutor(num_clients=n, strategy=strategy))


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        TensorFlowExecutor(strategy="fast")


# A client update written as a fold over the client's batches: the shape of
# local training, which the vectorized strategy steps for all clients at once.
@fedcore.tf_computation(tf.float32, fedcore.to_type((tf.float32, [None])))
def _step(total, batch):
    return total + tf.reduce_sum(batch) * 0.5


@fedcore.federated_computation(fedcore.SequenceType(fedcore.to_type((tf.float32, [None]))))
def _client_work(batches):
    return fedcore.sequence_reduce(batches, 0.0, _step)


@fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(fedcore.to_type((tf.float32, [None])))))
def _round(data):
    return fedcore.federated_sum(fedcore.federated_map(_client_work, data))


def _client_datasets(sizes, batch):
    return [tf.data.Dataset.from_tensor_slices(np.arange(s, dtype=np.float32)).batch(batch) for s in sizes]


@pytest.mark.parametrize("strategy", ["sequential", "vectorized", "auto"])
def test_unequal_dataset_lengths_match_the_reference(strategy):
    # 2, 5 and 0 full batches of 4: unequal numbers of steps, equal element shapes.
    data = _client_datasets([8, 20, 0], batch=4)
    expected = _round(data)
    got = execute(_round, (data,), {}, executor=TensorFlowExecutor(strategy=strategy))
    assert got == pytest.approx(expected)
    assert got == pytest.approx(0.5 * (sum(range(8)) + sum(range(20))))


@pytest.mark.parametrize("strategy", ["sequential", "vectorized", "auto"])
def test_partial_last_batches_match_the_reference(strategy):
    # 7 and 10 examples in batches of 4: full batches step together, the partial ones (3 and 2) one client at a time.
    data = _client_datasets([7, 10, 0, 4], batch=4)
    executor = TensorFlowExecutor(strategy=strategy)
    got = execute(_round, (data,), {}, executor=executor)
    assert got == pytest.approx(_round(data))
    assert got == pytest.approx(0.5 * (sum(range(7)) + sum(range(10)) + sum(range(4))))


def test_forced_vectorized_strategy_reports_what_it_cannot_run():
    # Elements whose shapes differ within one client's dataset cannot be stepped on a clients axis.
    data = [tf.data.Dataset.from_generator(lambda: iter([np.ones(2, np.float32), np.ones(3, np.float32)]),
                                           output_signature=tf.TensorSpec([None], tf.float32))]
    with pytest.raises(fedcore.ExecutionError, match="strategy='vectorized'"):
        execute(_round, (data,), {}, executor=TensorFlowExecutor(strategy="vectorized"))
    assert execute(_round, (data,), {}, executor=TensorFlowExecutor(strategy="auto")) == pytest.approx(2.5)


def test_repeated_rounds_never_retrace():
    executor = TensorFlowExecutor()
    for sizes in ([8, 12, 4], [4, 4, 16], [12, 8, 8]):
        execute(_round, (_client_datasets(sizes, batch=4),), {}, executor=executor)
    assert executor.trace_count == 1
    # A different number of clients is a different program.
    execute(_round, (_client_datasets([4, 4], batch=4),), {}, executor=executor)
    assert executor.trace_count == 2


def test_static_datasets_are_read_once_and_shuffled_ones_reshuffle_every_pass():
    from fedcore.runtime.tensorflow import values as tf_values

    def make_plain():
        return tf.data.Dataset.range(5).map(lambda x: tf.cast(x, tf.float32)).batch(5)

    plain = make_plain()
    shuffled = tf.data.Dataset.range(50).map(lambda x: tf.cast(x, tf.float32)).shuffle(50).batch(50)
    t = fedcore.to_type((tf.float32, [None]))
    assert tf_values.read(plain, t) is tf_values.read(plain, t)  # read once
    assert tf_values.read(make_plain(), t) is tf_values.read(plain, t)  # keyed by content, not by object
    np.testing.assert_array_equal(tf_values.client_elements(plain, t)[0], np.arange(5))
    first, second = (tf_values.client_elements(shuffled, t)[0] for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(50))
    assert list(first) != list(second)  # a new order each pass (equal with probability 1/50!)
    # The examples before the shuffle were read once.
    assert tf_values.read(shuffled, t) is tf_values.read(shuffled, t)


def test_vectorized_and_sequential_agree_on_a_model_step():
    @fedcore.tf_computation(fedcore.to_type((tf.float32, [3])), fedcore.to_type((tf.float32, [None, 3])))
    def sgd_step(w, x):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = tf.reduce_mean(tf.square(tf.linalg.matvec(x, w) - 1.0))
        return w - 0.1 * tape.gradient(loss, w)

    @fedcore.federated_computation(
        fedcore.type_at_server(fedcore.to_type((tf.float32, [3]))),
        fedcore.type_at_clients(fedcore.SequenceType(fedcore.to_type((tf.float32, [None, 3])))),
    )
    def train(w, data):
        @fedcore.federated_computation(fedcore.to_type((tf.float32, [3])), fedcore.SequenceType(fedcore.to_type((tf.float32, [None, 3]))))
        def local(w, batches):
            return fedcore.sequence_reduce(batches, w, sgd_step)

        return fedcore.federated_mean(fedcore.federated_map(local, fedcore.federated_zip([fedcore.federated_broadcast(w), data])))

    rng = np.random.default_rng(0)
    data = [tf.data.Dataset.from_tensor_slices(rng.normal(size=(n, 3)).astype(np.float32)).batch(2) for n in (4, 8, 2)]
    w = np.zeros(3, np.float32)
    expected = train(w, data)
    for strategy in ("sequential", "vectorized"):
        got = execute(train, (w, data), {}, executor=TensorFlowExecutor(strategy=strategy))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- a reduce of a map runs as one pass over clients ---------------------------

_VALUES = fedcore.type_at_clients(fedcore.to_type((tf.float32, [2])))


@fedcore.tf_computation(fedcore.to_type((tf.float32, [2])))
def _square(x):
    return x * x


@fedcore.tf_computation(fedcore.to_type((tf.float32, [2])), fedcore.to_type((tf.float32, [2])))
def _add_pair(a, b):
    return a + b


@fedcore.tf_computation(fedcore.to_type((tf.float32, [2])))
def _identity2(a):
    return a


@fedcore.federated_computation(_VALUES, fedcore.type_at_clients(tf.float32))
def _reductions(values, weights):
    squares = lambda: fedcore.federated_map(_square, values)  # noqa: E731 - a fresh map per reduce
    return (
        fedcore.federated_sum(squares()),
        fedcore.federated_mean(squares()),
        fedcore.federated_mean(squares(), weights),
        fedcore.federated_aggregate(squares(), np.zeros(2, np.float32), _add_pair, _add_pair, _identity2),
    )


@pytest.mark.parametrize("strategy", ["sequential", "vectorized"])
@pytest.mark.parametrize("n", [0, 1, 4])
def test_fused_map_reduce_matches_the_reference(strategy, n):
    rng = np.random.default_rng(n)
    values = [rng.normal(size=2).astype(np.float32) for _ in range(n)]
    weights = [float(w) for w in rng.uniform(0.5, 2.0, size=n)]
    expected = _reductions(values, weights)
    got = execute(_reductions, (values, weights), {}, executor=TensorFlowExecutor(strategy=strategy))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, equal_nan=True)


def test_sequential_fused_reduce_keeps_no_per_client_results():
    from fedcore.compiler.intrinsics import Kind, lookup
    from fedcore.compiler.transformations import pipeline, run_pipeline

    ir = run_pipeline(_reductions.ir, pipeline("execution"))
    walk = fedcore.compiler.building_blocks.walk
    fused = [n for n in walk(ir) if isinstance(n, fedcore.compiler.building_blocks.Intrinsic) and lookup(n.uri).kind is Kind.FUSED]
    assert len(fused) == 4
    executor = TensorFlowExecutor(strategy="sequential")
    execute(_reductions, ([np.ones(2, np.float32)] * 3, [1.0] * 3), {}, executor=executor)
    (program,) = list(executor._programs.values())
    graph = program.graph.as_graph_def()  # each program is one concrete function
    ops = {n.op for f in graph.library.function for n in f.node_def} | {n.op for n in graph.node}
    # tf.map_fn would stack every client's result in a TensorList; the fused loop only carries sums.
    assert not any(op.startswith("TensorList") for op in ops)


# -- client work that assigns tf.Variables runs one client at a time ---------

_shared = tf.Variable(0.0)


@fedcore.tf_computation(tf.float32)
def _assign_run_read(x):
    _shared.assign(x)
    _shared.assign_add(1.0)
    return _shared.read_value()


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def _stateful_each(xs):
    return fedcore.federated_map(_assign_run_read, xs)


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def _stateful_sum(xs):
    return fedcore.federated_sum(fedcore.federated_map(_assign_run_read, xs))


@pytest.mark.parametrize("strategy", ["sequential", "auto"])
def test_variable_writing_client_work_runs_sequentially_and_correctly(strategy):
    xs = [float(i) for i in range(64)]
    executor = TensorFlowExecutor(strategy=strategy)
    assert execute(_stateful_each, (xs,), {}, executor=executor) == pytest.approx([x + 1 for x in xs])
    assert execute(_stateful_sum, (xs,), {}, executor=executor) == pytest.approx(sum(xs) + 64)


def test_vectorized_strategy_says_why_it_cannot_run_variable_writing_work():
    with pytest.raises(fedcore.ExecutionError, match="assigns tf.Variables"):
        execute(_stateful_each, ([1.0, 2.0],), {}, executor=TensorFlowExecutor(strategy="vectorized"))

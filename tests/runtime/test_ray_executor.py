"""RayExecutor: conformance, one dispatch per worker per round, client data on the workers, faults."""

import collections
import copy
import sys
import threading
import time

import attrs
import hypothesis
import numpy as np
import pytest
import ray
import tensorflow as tf

import fedcore
from fedcore import learning, simulation
from fedcore.compiler import intrinsics
from fedcore.runtime.ray import RayExecutor, WorkerFailure, WorkerPool, plan, wire
from fedcore.runtime.ray.executor import assign
from fedcore.runtime.ray.rules import RULES
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.testing import conformance
from tests.compiler import test_scoping

# Factories and preprocessing defined here travel to the workers by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Every pool in this module takes half a CPU per worker: the shared pair and a pair for a fault test fit in 2 CPUs.
CPUS = 0.5


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


# A failed start fails every later test of the module at once, instead of each waiting again.
_start_failures: list = []


def start_pool(shared: bool = False, **kwargs) -> WorkerPool:
    if _start_failures:
        pytest.fail(f"the Ray workers failed to start earlier in this module: {_start_failures[0]}")
    try:
        return WorkerPool.shared(**kwargs) if shared else WorkerPool(**kwargs)
    except WorkerFailure as e:
        _start_failures.append(e)
        raise


@pytest.fixture(scope="module")
def pool(ray_session):
    return start_pool(shared=True, num_workers=2, cpus_per_worker=CPUS)


def make(pool, **kwargs):
    return lambda n: RayExecutor(num_clients=n, pool=pool, **kwargs)


# --------------------------------------------------------------------------
# Conformance: every case, against the reference.


@conformance.parametrize()
def test_conformance(case, pool):
    conformance.run_case(case, make(pool))


def test_every_intrinsic_has_a_rule():
    defined = intrinsics.definitions()
    assert any(d.kind is intrinsics.Kind.FUSED for d in defined)  # the fused ones are among them
    assert RULES.missing(defined) == []


def test_a_new_aggregation_runs_from_its_definition_alone(pool):
    from fedcore.compiler import algebra, federated_api, tracing

    definition = intrinsics.declare(
        "federated_product", "({T}@CLIENTS -> T@SERVER)", "Multiplies client values at the server.",
        intrinsics.Kind.AGGREGATE, placement=fedcore.SERVER, monoid=algebra.Product(),
    )
    fused = intrinsics.declare_fused(definition)
    try:
        assert RULES.missing([definition, fused]) == []

        def product(value):
            return federated_api.call_intrinsic(definition.uri, tracing.to_node(value, definition.uri))

        @fedcore.tf_computation(tf.float32)
        def plus_one(x):
            return x + 1.0

        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def product_of_map(xs):
            return product(fedcore.federated_map(plus_one, xs))

        @fedcore.federated_computation(fedcore.type_at_clients(fedcore.TensorType(tf.float32, [2])))
        def product_of_values(xs):
            return product(xs)

        values = [np.array([1.5, -2.0], np.float32), np.array([2.0, 3.0], np.float32), np.array([4.0, 0.5], np.float32)]
        with fedcore.execution_context(make(pool)(None)):
            assert product_of_map([1.0, 2.0, 3.0]) == pytest.approx(24.0)
            np.testing.assert_allclose(product_of_values(values), np.prod(values, axis=0), rtol=1e-6)
    finally:
        intrinsics.undeclare(fused)
        intrinsics.undeclare(definition)


def test_client_work_runs_on_the_workers(pool):
    @fedcore.tf_computation(tf.float32)
    def double(x):
        return x * 2.0

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def mean_of_doubles(x):
        return fedcore.federated_mean(fedcore.federated_map(double, x))

    before = pool.dispatches
    with fedcore.execution_context(make(pool)(None)):
        assert mean_of_doubles([1.0, 2.0, 3.0, 6.0]) == pytest.approx(6.0)
    assert pool.dispatches - before == 2  # one request to each worker


def test_an_integer_sum_is_exact_or_an_overflow_error_across_workers(pool):
    # Each worker's partial sum may leave int32; the whole sum is exact where it fits, and an
    # ExecutionError where it does not, as on the reference and TF executors.
    @fedcore.tf_computation(tf.int32)
    def same(x):
        return x

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def total(x):
        return fedcore.federated_sum(x)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def total_of_map(x):
        return fedcore.federated_sum(fedcore.federated_map(same, x))

    big = 2**31 - 1
    with fedcore.execution_context(make(pool, timeout_s=120)(None)):
        for comp in (total, total_of_map):
            assert comp([big, 1, -1, 0]) == big
            with pytest.raises(fedcore.runtime.executor.ExecutionError, match=r"overflows.*int32.*2147483648"):
                comp([big, 0, 1, 0])


def test_a_structure_at_the_type_depth_limit_runs_on_the_workers(pool):
    # {<<...int32...>>}@CLIENTS with a member MAX_DEPTH - 1 levels deep: MAX_DEPTH levels in all.
    member = fedcore.types.TensorType("int32")
    for _ in range(fedcore.types.MAX_DEPTH - 2):
        member = fedcore.types.StructType([(None, member)])
    value = 3
    for _ in range(fedcore.types.MAX_DEPTH - 2):
        value = [value]
    same = fedcore.tf_computation(member)(lambda x: x)
    mapped = fedcore.federated_computation(fedcore.type_at_clients(member))(lambda x: fedcore.federated_map(same, x))
    with fedcore.execution_context(make(pool, timeout_s=120)(None)):
        results = mapped([value, value])
    for result in results:
        while isinstance(result, (list, tuple)):
            (result,) = result
        assert result == 3


# --------------------------------------------------------------------------
# A FedAvg round: one dispatch per worker, the same result as the TF executor.


def _digits_train():
    return simulation.datasets.digits.load_data(num_clients=8, seed=1)[0]


def _to_batches(dataset):
    def to_example(e):
        return collections.OrderedDict(x=1.0 - tf.reshape(e["pixels"], [784]), y=tf.reshape(e["label"], [1]))

    return dataset.map(to_example).batch(16)


def _model_fn():
    model = tf.keras.Sequential([tf.keras.Input((784,)), tf.keras.layers.Dense(10, kernel_initializer="zeros"),
                                 tf.keras.layers.Softmax()])
    return learning.from_keras_model(
        model, loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 784]), y=tf.TensorSpec([None, 1], tf.int32)),
    )


@pytest.fixture(scope="module")
def fedavg():
    return learning.build_federated_averaging_process(
        _model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.1))


def _flat(value):
    return [np.asarray(x) for x in tf.nest.flatten(value)]


def test_fedavg_round_is_one_dispatch_per_worker_and_matches_tensorflow(pool, fedavg):
    executor = RayExecutor(pool=pool, client_data=_digits_train)
    ids = _digits_train().client_ids[:6]
    with fedcore.execution_context(TensorFlowExecutor()):
        state = fedavg.initialize()
        expected = fedavg.next(state, simulation.make_federated_data(_digits_train(), ids, _to_batches))
    with fedcore.execution_context(executor):
        data = executor.federated_data(ids, preprocess=_to_batches)
        before = pool.dispatches
        got = fedavg.next(state, data)
        assert pool.dispatches - before == pool.num_workers
        again = fedavg.next(state, data)  # a second round: everything is cached on the workers
    for a, b, c in zip(_flat(got), _flat(expected), _flat(again)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


def test_factory_data_is_built_on_the_workers_not_shipped(pool, fedavg, monkeypatch):
    executor = RayExecutor(pool=pool, client_data=_digits_train)
    requests = []
    original = executor._request
    monkeypatch.setattr(executor, "_request", lambda *a: requests.append(original(*a)) or requests[-1])
    ids = _digits_train().client_ids[:4]
    with fedcore.execution_context(executor):
        state = fedavg.initialize()
        data = executor.federated_data(ids, preprocess=_to_batches)
        fedavg.next(state, data)
        fedavg.next(state, data)
    assert requests
    for request in requests:
        assert not request.datasets  # no dataset graph was sent
        for node in request.nodes:
            if isinstance(node.op, plan.Arg):  # the client datasets travel as (source, client id) references
                assert all(isinstance(r, wire.ClientDataRef) for r in node.op.values)
    # The factory and each function travel once per worker, not every round.
    assert sum(len(r.sources) for r in requests) <= pool.num_workers
    second_round = requests[-pool.num_workers:]
    assert all(not r.functions and not r.sources for r in second_round)


def test_datasets_without_a_factory_are_shipped_once(pool):
    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(tf.int64)))
    def total(data):
        return fedcore.federated_sum(fedcore.federated_map(_sequence_total, data))

    executor = RayExecutor(pool=pool)
    requests = []
    original = executor._request
    executor._request = lambda *a: requests.append(original(*a)) or requests[-1]
    data = [tf.data.Dataset.range(n) for n in (3, 5, 10)]
    with fedcore.execution_context(executor):
        assert total(data) == 3 + 10 + 45
        assert total(data) == 3 + 10 + 45
    shipped = [len(r.datasets) for r in requests]
    assert sum(shipped) == 3 and all(n == 0 for n in shipped[len(shipped) // 2:])


@fedcore.tf_computation(fedcore.SequenceType(tf.int64))
def _sequence_total(ds):
    return ds.reduce(tf.constant(0, tf.int64), lambda a, b: a + b)


def test_executor_without_factory_refuses_federated_data(pool):
    with pytest.raises(fedcore.ExecutionError, match="client_data=factory"):
        RayExecutor(pool=pool).federated_data(["a"])


def test_greedy_assignment_balances_dataset_sizes():
    shards = assign([10, 1, 1, 8, 1, 1, 2], 2)
    loads = [sum([10, 1, 1, 8, 1, 1, 2][i] for i in s) for s in shards]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert max(loads) - min(loads) <= 1
    assert shards == [sorted(s) for s in shards]
    assert assign([1, 1], 3)[2] == []


def test_bad_configuration_is_a_clear_error(pool):
    with pytest.raises(ValueError, match="timeout_s"):
        RayExecutor(pool=pool, timeout_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        RayExecutor(pool=pool, max_retries=-1)
    with pytest.raises(TypeError, match="client_data"):
        RayExecutor(pool=pool, client_data="digits")
    with pytest.raises(ValueError, match="need 200 CPUs"):
        WorkerPool(num_workers=200)


# --------------------------------------------------------------------------
# Faults: a worker killed mid-round; the retry policy; timeouts.


@fedcore.tf_computation(tf.float32)
def _slow_square(x):
    # A fraction of a second of work per client, for the timeout test.
    def body(i, acc):
        return i + 1, acc + tf.sin(tf.cast(i, tf.float32)) * 0.0

    _, acc = tf.while_loop(lambda i, _: i < 400_000, body, (tf.constant(0), x * x))
    return acc


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def _slow_sum(x):
    return fedcore.federated_sum(fedcore.federated_map(_slow_square, x))


def _waiting_sum(release):
    """sum of squares, where each client's work waits (at most 60 s) until the file ``release`` exists."""

    @fedcore.tf_computation(tf.float32)
    def square_when_released(x):
        def waiting(i, t0):
            # The pattern depends on the loop counter (by an empty suffix), so the check is not hoisted.
            pattern = str(release) + tf.strings.substr(tf.strings.as_string(i), 0, 0)
            return tf.logical_and(tf.size(tf.io.matching_files(pattern)) == 0, tf.timestamp() - t0 < 60.0)

        t0 = tf.timestamp()
        _ = tf.while_loop(lambda i: waiting(i, t0), lambda i: i + 1, [tf.constant(0)])
        with tf.control_dependencies(_):
            return tf.identity(x * x)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def waiting_sum(x):
        return fedcore.federated_sum(fedcore.federated_map(square_when_released, x))

    return waiting_sum


def _kill_mid_round(pool, executor, values, tmp_path):
    """Runs a round whose client work waits for a release file; kills a worker while it waits.

    Returns (result, error) of the round.
    """
    release = tmp_path / "release"
    comp = _waiting_sum(release)
    outcome = {}

    def run():
        try:
            with fedcore.execution_context(executor):
                outcome["result"] = comp(values)
        except Exception as e:  # noqa: BLE001
            outcome["error"] = e

    before = pool.dispatches
    victim = pool.actors[0]
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while pool.dispatches == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # the workers are inside the round, waiting for the release file
    assert "result" not in outcome and "error" not in outcome
    ray.kill(victim, no_restart=True)
    time.sleep(0.5)
    release.write_text("go")
    thread.join(timeout=120)
    assert not thread.is_alive()
    return outcome.get("result"), outcome.get("error")


def test_a_worker_killed_mid_round_is_dropped_and_the_round_retried(ray_session, caplog, tmp_path):
    pool = start_pool(num_workers=2, cpus_per_worker=CPUS)
    try:
        executor = RayExecutor(pool=pool, max_retries=1, timeout_s=60)
        with caplog.at_level("WARNING", logger="fedcore.runtime.ray"):
            result, error = _kill_mid_round(pool, executor, [1.0, 2.0, 3.0, 4.0], tmp_path)
        assert error is None
        assert result == pytest.approx(30.0)
        assert pool.num_workers == 1
        assert "dropping a worker: the worker died" in caplog.text
        with fedcore.execution_context(executor):  # later rounds run on the survivor
            assert _slow_sum([3.0]) == pytest.approx(9.0)
    finally:
        pool.shutdown()


def test_without_retries_a_killed_worker_fails_the_round_clearly(ray_session, tmp_path):
    pool = start_pool(num_workers=2, cpus_per_worker=CPUS)
    try:
        executor = RayExecutor(pool=pool, max_retries=0, timeout_s=60)
        result, error = _kill_mid_round(pool, executor, [1.0, 2.0], tmp_path)
        assert result is None
        assert isinstance(error, WorkerFailure) and isinstance(error, fedcore.ExecutionError)
        assert "the worker died" in str(error) and "max_retries=0" in str(error)
    finally:
        pool.shutdown()


def test_a_worker_that_does_not_answer_in_time_fails_the_round(ray_session):
    pool = start_pool(num_workers=1, cpus_per_worker=CPUS)
    try:
        executor = RayExecutor(pool=pool, max_retries=0, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(WorkerFailure, match=r"timed out: no answer within timeout_s=0.5 s"):
            with fedcore.execution_context(executor):
                _slow_sum([1.0, 2.0])
        assert time.monotonic() - start < 30
        assert pool.num_workers == 0
        with pytest.raises(WorkerFailure, match=r"no workers left \(they were dropped after earlier failures: timed out: no answer within timeout_s=0.5 s\)"):
            with fedcore.execution_context(executor):
                _slow_sum([1.0])
    finally:
        pool.shutdown()


def test_errors_in_client_work_are_execution_errors_and_keep_the_workers(pool):
    @fedcore.tf_computation(tf.float32)
    def check(x):
        tf.debugging.assert_non_negative(x, message="negative reading")
        return x

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def total(x):
        return fedcore.federated_sum(fedcore.federated_map(check, x))

    workers = pool.num_workers
    with fedcore.execution_context(make(pool)(None)):
        with pytest.raises(fedcore.ExecutionError, match="negative reading"):
            total([1.0, -1.0, 2.0])
        assert total([1.0, 2.0]) == pytest.approx(3.0)
    assert pool.num_workers == workers


def test_datasets_calling_python_are_read_once_on_the_driver_and_sent_as_elements(pool):
    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(tf.int64)))
    def total(data):
        return fedcore.federated_sum(fedcore.federated_map(_sequence_total, data))

    def generated(n):
        return tf.data.Dataset.from_generator(lambda: iter(range(n)), output_signature=tf.TensorSpec([], tf.int64))

    executor = RayExecutor(pool=pool)
    requests = []
    original = executor._request
    executor._request = lambda *a: requests.append(original(*a)) or requests[-1]
    data = [generated(4), generated(6)]
    with fedcore.execution_context(executor):
        assert total(data) == 6 + 15
    payloads = [payload for r in requests for payload in r.datasets.values()]
    assert len(payloads) == 2 and all(isinstance(p, wire.DatasetElements) for p in payloads)


def test_clients_are_assigned_by_dataset_size(pool):
    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(tf.int64)))
    def total(data):
        return fedcore.federated_sum(fedcore.federated_map(_sequence_total, data))

    executor = RayExecutor(pool=pool)
    requests = []
    original = executor._request
    executor._request = lambda *a: requests.append(original(*a)) or requests[-1]
    with fedcore.execution_context(executor):
        assert total([tf.data.Dataset.range(n) for n in (1, 2, 30, 3)]) == 0 + 1 + 435 + 3
    assert sorted(r.clients for r in requests) == [[0, 1, 3], [2]]  # the big client alone


# --------------------------------------------------------------------------
# federated_secure_sum runs the masking protocol: the driver relays public keys and sees masked partial sums only.


@pytest.fixture
def servers(monkeypatch):
    """Every secure sum's server side on the driver, with everything it was given."""
    from fedcore.runtime import secure_aggregation as sa

    made = []

    class Recording(sa.ServerSide):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(sa, "ServerSide", Recording)  # on the driver; the workers are other processes
    return made


def _secure_sum_of_sixes():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.TensorSpec([6], tf.int32)))
    def secure(x):
        return fedcore.federated_secure_sum(x, 100)

    return secure


def test_secure_sum_driver_cannot_remove_any_mask(pool, servers, monkeypatch):
    from fedcore.runtime import secure_aggregation as sa

    requests = []
    run = RayExecutor._request
    monkeypatch.setattr(RayExecutor, "_request", lambda self, *a: requests.append(run(self, *a)) or requests[-1])
    rng = np.random.default_rng(1)
    clients = [rng.integers(0, 101, 6).astype(np.int32) for _ in range(6)]
    with fedcore.execution_context(RayExecutor(pool=pool)):
        result = _secure_sum_of_sixes()(clients)
    np.testing.assert_array_equal(result, np.sum(clients, axis=0))
    # Everything the driver holds: one public key per client, one masked sum per worker, and its own records.
    [server] = servers
    assert sorted(server.keys) == list(range(6)) and len(set(server.keys.values())) == 6
    shards = [r.clients for r in requests]
    assert len(shards) == 2 and [c for c, _ in server.received] == [tuple(s) for s in shards]
    record = next(o for r in requests for o in r.outputs if isinstance(o, plan.SecureSumPartial))
    assert sorted(f.name for f in attrs.fields(type(record))) == ["bits", "bounds", "member", "source", "token"]
    for shard, (_, partial) in zip(shards, server.received):
        plain = np.sum([clients[i] for i in shard], axis=0).astype(np.uint64)
        assert partial.dtype == np.uint64 and not np.any(partial == plain)
        # The old attack: remove the masks with the pairwise seeds the driver knows.  It knows none; seeds it
        # derives with a key of its own from the clients' public keys are not the clients' seeds.
        own = sa.new_private_key()
        guess = partial.copy()
        for i in shard:
            for j in range(6):
                if j not in shard:
                    r = sa.expand(sa.shared_seed(own, i, j, server.keys[j]), 6, server.bits)
                    guess = guess - r if j > i else guess + r
        assert not np.array_equal(guess & np.uint64(2**server.bits - 1), plain)


def test_secure_sum_worker_lost_between_rounds_reruns_with_fresh_keys(pool, servers, monkeypatch):
    # The shared workers, in a pool of this test's own that forgets a lost worker without killing it.
    view = copy.copy(pool)
    view.actors, view.holds = list(pool.actors), {a: set() for a in pool.actors}
    view.drop = lambda actor: view.actors.remove(actor)
    answers = RayExecutor._answers
    calls = []

    def lose_one_in_the_second_round(self, ray_module, futures, work):
        dead, replies = answers(self, ray_module, futures, work)
        calls.append(len(futures))
        if len(calls) == 2:  # the first attempt's second round: the first worker's masked sum never comes
            return [(work[0][0], "the worker died (lost between the rounds)")], replies[1:]
        return dead, replies

    monkeypatch.setattr(RayExecutor, "_answers", lose_one_in_the_second_round)
    clients = [np.full(6, v, np.int32) for v in (5, 17, 100, 0)]
    with fedcore.execution_context(RayExecutor(pool=view, max_retries=1)):
        result = _secure_sum_of_sixes()(clients)
    np.testing.assert_array_equal(result, np.sum(clients, axis=0))
    assert calls == [2, 2, 1, 1]  # two rounds on two workers, then the whole stage again on the one left
    first, second = servers
    assert sorted(first.keys) == [0, 1, 2, 3] and first.received == []  # abandoned before any masked sum
    assert [c for c, _ in second.received] == [(0, 1, 2, 3)]  # all clients on the remaining worker
    assert not set(first.keys.values()) & set(second.keys.values())  # new key pairs for the new attempt
    assert view.num_workers == 1 and pool.num_workers == 2


def test_secure_sum_out_of_range_names_the_client(pool):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 5)

    with fedcore.execution_context(RayExecutor(pool=pool)):
        with pytest.raises(fedcore.ExecutionError, match=r"client 2 gave 9, outside the allowed range \[0, 5\]"):
            secure([1, 2, 9])


# --------------------------------------------------------------------------
# Lexical scoping: the random nested programs of tests/compiler/test_scoping.py, on Ray.


@hypothesis.settings(max_examples=6, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(program=test_scoping._programs(3))
def test_random_nested_programs_agree_with_python_on_ray(program, pool):
    expected = test_scoping.evaluate(program, [1.5, -4.0])
    with fedcore.execution_context(RayExecutor(pool=pool)):
        got = float(np.asarray(test_scoping.build(program)(1.5, -4.0)))
    assert np.isclose(got, expected, rtol=1e-5, atol=1e-4), (program, got, expected)


def test_the_start_timeout_comes_from_the_environment(monkeypatch):
    from fedcore.runtime.ray.pool import start_timeout

    monkeypatch.setenv("FEDCORE_RAY_START_TIMEOUT_S", "300")
    assert start_timeout() == 300.0
    monkeypatch.delenv("FEDCORE_RAY_START_TIMEOUT_S")
    assert start_timeout() == 120.0
    for bad in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("FEDCORE_RAY_START_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="FEDCORE_RAY_START_TIMEOUT_S must be a positive number"):
            start_timeout()

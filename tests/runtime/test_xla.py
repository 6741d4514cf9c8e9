"""The TF executor with XLA (``jit_compile``): conformance where XLA compiles, clear refusals or fallbacks elsewhere."""

import collections
import functools

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.runtime.tensorflow import executor as tf_executor
from fedcore.testing import conformance

_REFUSED = "cannot run with jit_compile=True: "


@functools.lru_cache(maxsize=None)
def _run_with_xla(name):
    """'xla' if the case matched the reference compiled by XLA; the refusal's message if XLA could not take it."""
    case = conformance.get_case(name)
    made = []

    def factory(n):
        made.append(TensorFlowExecutor(num_clients=n, jit_compile=True))
        return made[-1]

    try:
        conformance.run_case(case, factory)
    except AssertionError as e:
        error = e.__cause__
        if case.expect_error is None and isinstance(error, ExecutionError) and _REFUSED in str(error):
            return str(error)
        raise
    reports = [ex.jit_report for ex in made if ex.jit_report is not None]
    if case.expect_error is None and "zero_clients" not in case.tags:
        assert reports and all(r.xla for r in reports), reports
    return "xla"


# The whole suite under XLA takes about two minutes on two busy cores (XLA compiles every program;
# the cases with client datasets take seconds each and are refused anyway): a subset runs here.
_XLA_CASES = conformance.select(exclude_tags=["datasets", "errors"])


@conformance.parametrize(cases=_XLA_CASES)
def test_jit_compile_true_conforms_or_refuses_with_a_reason(case):
    outcome = _run_with_xla(case.name)
    if outcome != "xla":
        reason = outcome.split(_REFUSED, 1)[1]
        assert reason.startswith(("XLA cannot compile it: ", "the program checks its values with Assert")), outcome
        assert "_XlaMustCompile" not in reason and "\n" not in reason


def test_most_cases_compile_with_xla():
    value_cases = [c for c in _XLA_CASES if c.expect_error is None]
    compiled = [c.name for c in value_cases if _run_with_xla(c.name) == "xla"]
    assert len(compiled) >= 0.5 * len(value_cases)


@pytest.fixture
def xla_pays(monkeypatch):
    """'auto' chooses XLA as it would where it pays (a GPU)."""
    monkeypatch.setattr(tf_executor, "_xla_pays_here", lambda: True)


# Refused under jit_compile=True for each kind of reason: datasets in the graph, an overflow
# check (Assert), strings, a shape XLA cannot slice (no clients).
_FALLBACK_CASES = ["sequence_reduce", "federated_sum", "strings_at_clients", "zero_clients_aggregate_reports_zero"]


@pytest.mark.parametrize("name", _FALLBACK_CASES)
def test_auto_falls_back_where_xla_cannot_compile(xla_pays, name):
    made = []

    def factory(n):
        made.append(TensorFlowExecutor(num_clients=n, jit_compile="auto"))
        return made[-1]

    conformance.run_case(conformance.get_case(name), factory)
    reports = [ex.jit_report for ex in made if ex.jit_report is not None]
    assert reports and not any(r.xla for r in reports)
    assert all(r.reason.startswith(("XLA cannot compile it", "the program checks")) for r in reports), reports


def test_auto_decides_once_per_program(xla_pays):
    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(tf.float32)))
    def totals(data):
        return fedcore.federated_map(fedcore.tf_computation(lambda ds: ds.reduce(0.0, lambda a, x: a + x)), data)

    ex = TensorFlowExecutor(jit_compile="auto")
    with fedcore.execution_context(ex):
        assert list(totals([[1.0, 2.0], [3.0]])) == [3.0, 3.0]
        first = ex.jit_report
        assert list(totals([[4.0], [5.0]])) == [4.0, 5.0]
    assert not first.xla and ex.jit_report == first
    assert ex.trace_count == 1


def test_auto_without_a_gpu_keeps_xla_off_and_says_why(monkeypatch):
    monkeypatch.setattr(tf_executor, "_xla_pays_here", lambda: False)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def mean(x):
        return fedcore.federated_mean(x)

    ex = TensorFlowExecutor(jit_compile="auto")
    with fedcore.execution_context(ex):
        assert mean([1.0, 2.0, 4.5]) == pytest.approx(2.5)
    assert not ex.jit_report.xla and "GPU" in ex.jit_report.reason


def test_xla_round_matches_the_plain_program():
    model_type = fedcore.to_type(collections.OrderedDict(w=(tf.float32, [3, 2])))
    batch_type = fedcore.TensorType(tf.float32, [None, 3])

    @fedcore.tf_computation(model_type, batch_type)
    def step(model, x):
        w = model["w"]
        return collections.OrderedDict(w=w - 0.1 * tf.matmul(tf.transpose(x), tf.tanh(tf.matmul(x, w))))

    @fedcore.federated_computation(model_type, fedcore.SequenceType(batch_type))
    def local(model, batches):
        return fedcore.sequence_reduce(batches, model, step)

    @fedcore.federated_computation(fedcore.type_at_server(model_type),
                                   fedcore.type_at_clients(fedcore.SequenceType(batch_type)))
    def round_(model, data):
        return fedcore.federated_mean(fedcore.federated_map(local, fedcore.federated_zip([fedcore.federated_broadcast(model), data])))

    rng = np.random.default_rng(0)
    model = collections.OrderedDict(w=rng.normal(size=(3, 2)).astype(np.float32))
    data = [tf.data.Dataset.from_tensor_slices(rng.normal(size=(k, 3)).astype(np.float32)).batch(2) for k in (4, 6, 3)]  # ragged, one partial batch
    results = {}
    for jit in (False, True):
        ex = TensorFlowExecutor(jit_compile=jit)
        with fedcore.execution_context(ex):
            results[jit] = round_(model, data)["w"]
        assert ex.jit_report.xla is jit
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        reference = round_(model, data)["w"]
    np.testing.assert_allclose(results[True], results[False], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[True], reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "AUTO"])
def test_jit_compile_takes_only_false_true_or_auto(bad):
    with pytest.raises(ValueError, match=r"jit_compile must be False, True or 'auto', got "):
        TensorFlowExecutor(jit_compile=bad)


def test_a_branch_in_vectorized_client_work_falls_back_under_auto_and_is_refused_under_true(xla_pays):
    # Vectorized over clients, a branch on a tensor partitions the clients: a shape XLA cannot read as a constant.
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add_positive(a, x):
        if x > 0:
            a = a + x
        return a

    @fedcore.federated_computation(fedcore.SequenceType(tf.float32))
    def total(data):
        return fedcore.sequence_reduce(data, 0.0, add_positive)

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(tf.float32)))
    def totals(data):
        return fedcore.federated_sum(fedcore.federated_map(total, data))

    data = [[1.0, -2.0], [3.0, 4.0, -5.0], [6.0]]
    auto = TensorFlowExecutor(jit_compile="auto")
    with fedcore.execution_context(auto):
        assert totals(data) == pytest.approx(14.0)
    assert not auto.jit_report.xla and auto.jit_report.reason.startswith("XLA cannot compile it: ")
    with fedcore.execution_context(TensorFlowExecutor(jit_compile=True)):
        with pytest.raises(ExecutionError, match=r"totals cannot run with jit_compile=True: XLA cannot compile it: "):
            totals(data)


@pytest.mark.parametrize("strategy", ["vectorized", "sequential"])
def test_xla_compiles_shuffled_batched_client_data_on_each_strategy(strategy):
    # The tutorial's pipeline (shuffle, then batch, a partial last batch) read in the clients' loop: each
    # full batch is sliced at its static size, which XLA needs; the step only adds, so the shuffled order
    # cannot change the result.
    batch_type = fedcore.TensorType(tf.float32, [None, 3])

    @fedcore.tf_computation(fedcore.TensorType(tf.float32, [3]), batch_type)
    def step(total, x):
        return total + tf.reduce_sum(tf.square(x), axis=0)

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(batch_type)))
    def totals(data):
        local = fedcore.federated_computation(
            lambda batches: fedcore.sequence_reduce(batches, np.zeros(3, np.float32), step),
            fedcore.SequenceType(batch_type))
        return fedcore.federated_sum(fedcore.federated_map(local, data))

    rng = np.random.default_rng(1)
    data = [tf.data.Dataset.from_tensor_slices(rng.normal(size=(k, 3)).astype(np.float32)).shuffle(50).batch(4)
            for k in (9, 4, 1, 13)]
    ex = TensorFlowExecutor(strategy=strategy, jit_compile=True)
    with fedcore.execution_context(ex):
        got = totals(data)
    assert ex.jit_report.xla
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        reference = totals(data)
    np.testing.assert_allclose(got, reference, rtol=1e-5)

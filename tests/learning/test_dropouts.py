"""Client dropouts (run_round and its policy) and non-finite client updates, on both executors."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.runtime.tensorflow import TensorFlowExecutor
from tests.learning.helpers import keras_model_fn, random_batches

EXECUTORS = {"reference": fedcore.ReferenceExecutor, "tensorflow": TensorFlowExecutor}
# A client's non-finite update is zeroed inside its client work: on the clients axis and in the loop.
STRATEGIES = {"tensorflow-sequential": lambda: TensorFlowExecutor(strategy="sequential"),
              "tensorflow-vectorized": lambda: TensorFlowExecutor(strategy="vectorized")}
ALL_STRATEGIES = {**EXECUTORS, **STRATEGIES}


@pytest.fixture(scope="module")
def process():
    return learning.build_federated_averaging_process(
        keras_model_fn, client_optimizer_fn=lambda: keras.optimizers.SGD(learning_rate=0.1), report_nonfinite=True
    )


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request):
    with fedcore.execution_context(EXECUTORS[request.param]()):
        yield request.param


@pytest.fixture(params=sorted(ALL_STRATEGIES))
def any_strategy(request):
    with fedcore.execution_context(ALL_STRATEGIES[request.param]()):
        yield request.param


def clients(n, examples=20, step=5):
    return [random_batches(examples + step * i, seed=i) for i in range(n)]


def full_batches_for(strategy):
    """Client sizes step by 10 (full batches only) where the strategy must vectorize: mapped datasets
    with a partial last batch run in the loop."""
    return dict(step=10) if strategy == "tensorflow-vectorized" else {}


def failing(dataset, how="assert"):
    """``dataset`` with a map that raises when its elements are read (as a broken client's pipeline would)."""
    if how == "assert":
        def check(batch):
            tf.debugging.assert_less(tf.reduce_sum(tf.abs(batch["x"])), -1.0, message="injected client failure")
            return batch
    else:
        def boom(x):
            raise RuntimeError("injected py_function failure")

        def check(batch):
            x = tf.py_function(boom, [batch["x"]], tf.float32)
            x.set_shape(batch["x"].shape)
            return collections.OrderedDict(x=x, y=batch["y"])
    return dataset.map(check)


def nonfinite(dataset, value=np.nan):
    return dataset.map(lambda b: collections.OrderedDict(x=b["x"] * value, y=b["y"]))


def leaves(state):
    return [np.asarray(x) for x in learning.checkpoint._nest.flatten(state)]


def assert_states_equal(a, b, atol=0.0):
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def test_a_round_without_failures_is_one_call_and_reports_zero_dropped(process, executor):
    state = process.initialize()
    data = clients(4)
    calls = []

    def next_fn(s, d):
        calls.append(len(d))
        return process.next(s, d)

    result = learning.run_round(process, state, data, next_fn=next_fn)
    assert calls == [4]
    expected_state, expected_metrics = process.next(state, data)
    new_state, metrics = result
    assert_states_equal(new_state, expected_state)
    assert metrics["clients_dropped"] == 0 == result.clients_dropped and result.dropped == ()
    assert metrics["num_nonfinite_updates"] == 0
    assert metrics["loss"] == expected_metrics["loss"]


@pytest.mark.parametrize("bad, how", [([2], "assert"), ([0, 5], "py_function"), ([5], "assert")])
def test_failing_clients_are_dropped_and_the_round_completes_with_the_survivors(process, executor, bad, how):
    state = process.initialize()
    data = clients(6)
    broken = [failing(d, how) if i in bad else d for i, d in enumerate(data)]
    ids = [f"client-{i}" for i in range(6)]
    result = learning.run_round(process, state, broken, learning.DropoutPolicy(min_clients=3), client_ids=ids)
    assert [d.index for d in result.dropped] == bad and [d.client_id for d in result.dropped] == [ids[i] for i in bad]
    assert all("injected" in d.error for d in result.dropped)
    assert result.metrics["clients_dropped"] == len(bad) and result.num_clients == 6
    survivors = [d for i, d in enumerate(data) if i not in bad]
    expected_state, expected_metrics = process.next(state, survivors)
    assert_states_equal(result.state, expected_state, atol=1e-6)
    assert result.metrics["num_examples"] == expected_metrics["num_examples"]


def test_below_the_policy_the_round_fails_clearly_and_the_state_is_unchanged(process, executor):
    state = process.initialize()
    before = leaves(state)
    data = clients(4)
    broken = [failing(d) if i in (1, 3) else d for i, d in enumerate(data)]
    with pytest.raises(learning.RoundFailedError) as info:
        learning.run_round(process, state, broken, learning.DropoutPolicy(min_clients=3, max_dropped_fraction=1.0),
                           client_ids=["a", "b", "c", "d"])
    message = str(info.value)
    assert "2 of its 4 clients failed, leaving 2" in message and "at least 3 surviving client(s)" in message
    assert "'b'" in message and "'d'" in message and "the state is unchanged" in message
    assert [d.client_id for d in info.value.dropped] == ["b", "d"]
    assert isinstance(info.value, fedcore.ExecutionError)
    # The fraction alone can refuse the round too.
    with pytest.raises(learning.RoundFailedError, match="at most 25% dropped"):
        learning.run_round(process, state, broken, learning.DropoutPolicy(max_dropped_fraction=0.25))
    for x, y in zip(before, leaves(state)):
        assert np.array_equal(x, y)


def test_when_every_client_fails_the_error_points_at_the_computation(process, executor):
    state = process.initialize()
    broken = [failing(d) for d in clients(3)]
    with pytest.raises(learning.RoundFailedError) as info:
        learning.run_round(process, state, broken, learning.DropoutPolicy(max_dropped_fraction=1.0))
    assert "3 of its 3 clients failed" in str(info.value) and "Every client failed" in str(info.value)
    assert "injected client failure" in str(info.value)


def test_a_failure_no_single_client_causes_is_not_swallowed(process):
    state = process.initialize()
    data = clients(4)

    def next_fn(s, d):  # only the full round fails: the failure belongs to no client
        if len(d) == 4:
            raise fedcore.ExecutionError("the whole round is broken")
        return process.next(s, d)

    with pytest.raises(learning.RoundFailedError, match="not because of any one client") as info:
        learning.run_round(process, state, data, next_fn=next_fn)
    assert "the whole round is broken" in str(info.value) and info.value.dropped == ()


def test_other_errors_propagate_at_once(process):
    state = process.initialize()
    calls = []

    def next_fn(s, d):
        calls.append(1)
        raise TypeError("a programming error")

    with pytest.raises(TypeError, match="a programming error"):
        learning.run_round(process, state, clients(3), next_fn=next_fn)
    assert calls == [1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_clients must be a whole number >= 1"):
        learning.DropoutPolicy(min_clients=0)
    with pytest.raises(ValueError, match="max_dropped_fraction must be a number between 0 and 1"):
        learning.DropoutPolicy(max_dropped_fraction=1.5)
    with pytest.raises(ValueError, match="client_ids has 1 ids but client_data has 2"):
        learning.run_round(None, None, [1, 2], client_ids=["a"])
    with pytest.raises(TypeError, match="policy must be"):
        learning.run_round(None, None, [1], policy=3)


# --------------------------------------------------------------------------
# Non-finite updates


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_nonfinite_update_is_left_out_and_counted(process, any_strategy, value):
    state = process.initialize()
    data = clients(3, **full_batches_for(any_strategy))
    got_state, metrics = process.next(state, [data[0], nonfinite(data[1], value), data[2]])
    assert metrics["num_nonfinite_updates"] == 1
    expected_state, _ = process.next(state, [data[0], data[2]])
    assert_states_equal(got_state, expected_state, atol=1e-6)
    assert all(np.all(np.isfinite(x)) for x in leaves(got_state))


def test_with_only_nonfinite_updates_the_server_model_stays_as_it_was(process, any_strategy):
    state, _ = process.next(process.initialize(), clients(2))
    got_state, metrics = process.next(state, [nonfinite(d) for d in clients(3, **full_batches_for(any_strategy))])
    assert metrics["num_nonfinite_updates"] == 3
    assert_states_equal(got_state.model, state.model)
    assert all(np.all(np.isfinite(x)) for x in leaves(got_state))


class Overflowing(learning.optimizers.SGD):
    """A server optimizer whose step overflows float32 for any non-zero gradient."""

    def _step(self, w, g, slots, step):
        return w - g * tf.constant(1e30, w.dtype) * tf.constant(1e30, w.dtype), []


def test_a_server_step_that_would_overflow_is_refused(executor):
    huge = learning.build_federated_averaging_process(
        keras_model_fn,
        client_optimizer_fn=lambda: keras.optimizers.SGD(learning_rate=0.1),
        server_optimizer_fn=lambda: Overflowing(learning_rate=1.0),
    )
    state = huge.initialize()
    got_state, metrics = huge.next(state, clients(2))  # the clients' updates are finite, the server step is not
    assert np.isfinite(metrics["loss"])
    assert_states_equal(got_state, state)


def test_the_count_is_opt_in_and_keeps_the_default_metrics(process):
    default = learning.build_federated_averaging_process(
        keras_model_fn, client_optimizer_fn=lambda: keras.optimizers.SGD(learning_rate=0.1)
    )
    assert str(default.next.type_signature.result[1]) == "<accuracy=float32,loss=float32,num_examples=int64>@SERVER"
    assert list(process.next.type_signature.result[1].names()) == [
        "accuracy", "loss", "num_examples", "num_nonfinite_updates"
    ]


def test_a_round_with_fewer_clients_than_min_clients_fails_before_it_runs():
    calls = []

    def next_fn(state, data):
        calls.append(len(data))
        return state + 1, {}

    policy = learning.DropoutPolicy(min_clients=5)
    with pytest.raises(learning.RoundFailedError) as info:
        learning.run_round(None, 0, ["a", "b"], policy, next_fn=next_fn)
    assert "the round has 2 client(s), fewer than the dropout policy's min_clients=5" in str(info.value)
    assert "the state is unchanged" in str(info.value) and calls == []
    result = learning.run_round(None, 0, ["a"] * 5, policy, next_fn=next_fn)
    assert result.state == 1 and calls == [5]

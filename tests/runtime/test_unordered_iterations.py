"""The sequential loop over clients lets iterations overlap when client work has an ``Assert``.

Inside a tf.function, TensorFlow makes each stateful op of a loop body a
control output of the body, and the next iteration waits for it: client work
with one ``Assert`` (TensorFlow's sparse cross-entropy adds one where the batch
size is unknown) ran its clients one after another.  fedcore builds the loop
without those control outputs where client work's stateful ops may run in any
order across clients.  The checks must still run, for every client, and the
results must not change; client work whose stateful ops' order matters (a
stateful random op, a print) keeps TensorFlow's order.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import fedcore
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.runtime.tensorflow.lowering import Compiler

CLIENT_FLOATS = fedcore.FederatedType(tf.float32, fedcore.CLIENTS)


@fedcore.tf_computation(tf.float32)
def checked(x):
    tf.debugging.assert_less(x, 5.0, message="client value too large")
    return x * 2.0 + 1.0


@fedcore.tf_computation(tf.float32)
def noisy(x):
    return x + tf.random.uniform([], seed=1)  # a stateful random op: which client draws what depends on the order


@fedcore.tf_computation(tf.float32)
def printing(x):
    tf.print("client", x)
    return x


@fedcore.federated_computation(CLIENT_FLOATS)
def mapped(xs):
    return fedcore.federated_map(checked, xs)


@fedcore.federated_computation(CLIENT_FLOATS)
def summed(xs):  # a map fused into its sum: the fold over clients
    return fedcore.federated_sum(fedcore.federated_map(checked, xs))


def _client_loop_bodies(executor):
    """The FunctionDefs of the While loops at the top of the last program's graph (the loops over clients)."""
    graph_def = list(executor._programs.values())[-1].plain.graph.as_graph_def()
    library = {f.signature.name: f for f in graph_def.library.function}
    return [library[n.attr["body"].func.name] for n in graph_def.node if n.op in ("While", "StatelessWhile")]


@pytest.mark.parametrize("comp", [mapped, summed], ids=["map", "fold"])
def test_client_loop_with_a_check_has_no_control_outputs(comp):
    executor = TensorFlowExecutor(strategy="sequential")
    with fedcore.execution_context(executor):
        comp([1.0, 2.0, 3.0])
    bodies = _client_loop_bodies(executor)
    assert bodies, "no loop over clients found"
    for body in bodies:
        assert dict(body.control_ret) == {}, f"{body.signature.name} orders its iterations: {dict(body.control_ret)}"


@pytest.mark.parametrize("comp", [mapped, summed], ids=["map", "fold"])
@pytest.mark.parametrize("bad", [0, 2, 5])
def test_a_failing_check_in_any_client_still_fails(comp, bad):
    values = [1.0, 2.0, 3.0, 4.0, 0.5, -1.0]
    values[bad] = 7.0
    with fedcore.execution_context(TensorFlowExecutor(strategy="sequential")):
        with pytest.raises(ExecutionError, match="client value too large"):
            comp(values)


@pytest.mark.parametrize("fn", [noisy, printing], ids=["random", "print"])
def test_client_work_whose_stateful_ops_order_matters_keeps_it(fn):
    @fedcore.federated_computation(CLIENT_FLOATS)
    def comp(xs):
        return fedcore.federated_map(fn, xs)

    ir = comp.ir
    assert not Compiler(3, "sequential", ir).unordered_clients
    assert Compiler(3, "sequential", mapped.ir).unordered_clients
    executor = TensorFlowExecutor(strategy="sequential")
    with fedcore.execution_context(executor):
        comp([1.0, 2.0, 3.0])
    assert any(dict(body.control_ret) for body in _client_loop_bodies(executor))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-100.0, 4.5, width=32), min_size=0, max_size=12))
def test_results_equal_the_reference(values):
    values = [np.float32(v) for v in values]
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        want_map, want_sum = mapped(values), summed(values)
    with fedcore.execution_context(TensorFlowExecutor(strategy="sequential")):
        got_map, got_sum = mapped(values), summed(values)
    np.testing.assert_array_equal(np.asarray(got_map, np.float32), np.asarray(want_map, np.float32))
    np.testing.assert_allclose(np.float64(got_sum), np.float64(want_sum), rtol=1e-6, atol=1e-5)

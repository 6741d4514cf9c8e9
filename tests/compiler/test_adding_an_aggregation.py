"""Adding an aggregation intrinsic takes its definition: every rule table derives its rule from the monoid.

The test declares ``federated_product`` (client values multiplied at the
server), runs it on every executor and strategy and through a MapReduceForm,
and removes it again.
"""

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import algebra
from fedcore.compiler import federated_api, intrinsics, tracing
from fedcore.compiler import forms
from fedcore.compiler.intrinsics import Kind
from fedcore.runtime import reference, tensorflow as tf_backend
from tests.compiler.form_drivers import run_map_reduce_form


@pytest.fixture
def federated_product():
    definition = intrinsics.declare(
        "federated_product", "({T}@CLIENTS -> T@SERVER)", "Multiplies client values at the server.",
        Kind.AGGREGATE, placement=fedcore.SERVER, monoid=algebra.Product(),
    )
    fused = intrinsics.declare_fused(definition)
    try:
        yield lambda value: federated_api.call_intrinsic("federated_product", tracing.to_node(value, "federated_product"))
    finally:
        intrinsics.undeclare(fused)
        intrinsics.undeclare(definition)
    assert "federated_product" not in intrinsics.INTRINSICS


def test_every_table_has_a_rule_for_the_new_intrinsic(federated_product):
    for table in (reference.RULES, tf_backend.RULES, tf_backend.BATCHED):
        assert table.missing() == [], table


def _computations(federated_product):
    @fedcore.tf_computation(tf.float32)
    def plus_one(x):
        return x + 1.0

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.TensorType(tf.float32, [2])))
    def product(xs):
        return federated_product(xs)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def product_of_map(xs):
        return federated_product(fedcore.federated_map(plus_one, xs))

    return product, product_of_map


EXECUTORS = {
    "reference": lambda: fedcore.ReferenceExecutor(),
    "tf-auto": lambda: tf_backend.TensorFlowExecutor(),
    "tf-sequential": lambda: tf_backend.TensorFlowExecutor(strategy="sequential"),
    "tf-vectorized": lambda: tf_backend.TensorFlowExecutor(strategy="vectorized"),
}


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_the_new_intrinsic_runs_everywhere(federated_product, executor):
    product, product_of_map = _computations(federated_product)
    assert str(product.type_signature) == "({float32[2]}@CLIENTS -> float32[2]@SERVER)"
    values = [np.array([1.5, -2.0], np.float32), np.array([2.0, 3.0], np.float32), np.array([4.0, 0.5], np.float32)]
    with fedcore.execution_context(EXECUTORS[executor]()):
        np.testing.assert_allclose(product(values), np.prod(values, axis=0), rtol=1e-6)
        np.testing.assert_allclose(product_of_map([1.0, 2.0, 3.0]), 24.0, rtol=1e-6)
        np.testing.assert_allclose(product([]), [1.0, 1.0])  # over zero clients: the monoid's report(zero)


def test_the_new_intrinsic_compiles_to_a_map_reduce_form(federated_product):
    @fedcore.tf_computation(tf.float32, tf.float32)
    def scale(s, d):
        return s * d

    @fedcore.federated_computation(fedcore.type_at_server(tf.float32), fedcore.type_at_clients(tf.float32))
    def round_(state, data):
        s = fedcore.federated_broadcast(state)
        p = federated_product(fedcore.federated_map(scale, fedcore.federated_zip([s, data])))
        return p, p

    form = forms.to_map_reduce_form(round_)
    state, metrics = run_map_reduce_form(form, np.float32(2.0), [np.float32(v) for v in (1.0, 3.0, 5.0)], groups=2)
    np.testing.assert_allclose(state, 2.0 ** 3 * 15.0, rtol=1e-6)
    np.testing.assert_allclose(state, round_(np.float32(2.0), [1.0, 3.0, 5.0])[0], rtol=1e-6)

"""AutoGraph converts the user's code in tf_computations, and none of fedcore's, Keras's or their helpers'.

Counts, not timings: building the seed tutorial's FedAvg process traces each
of its tf_computations once, builds the Keras model once and converts no
library function; user code keeps Python control flow over tensors.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

import fedcore
from fedcore import learning
from fedcore.compiler import tf_function
from fedcore.runtime.tensorflow import TensorFlowExecutor
from tests.learning import helpers
from tests.learning.mnist_models import MnistModel, mnist_forward_pass


@pytest.fixture
def conversions(monkeypatch):
    """The modules of the functions AutoGraph converts while the test runs."""
    seen = []
    original = autograph_api._convert_actual

    def spy(entity, program_ctx):
        seen.append(getattr(entity, "__module__", None) or "")
        return original(entity, program_ctx)

    monkeypatch.setattr(autograph_api, "_convert_actual", spy)
    return seen


@pytest.fixture
def traces(monkeypatch):
    """The names of the tf_computations traced while the test runs."""
    names = []
    original = tf_function.TFFunction.__init__

    def spy(self, python_fn, parameter_type, unpack, name):
        names.append(name)
        original(self, python_fn, parameter_type, unpack, name)

    monkeypatch.setattr(tf_function.TFFunction, "__init__", spy)
    return names


def test_building_fedavg_converts_no_library_code_and_traces_each_computation_once(conversions, traces):
    calls = []

    def model_fn():
        calls.append(1)
        return helpers.keras_model_fn()

    process = learning.build_federated_averaging_process(
        model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.02)
    )
    process.initialize()
    assert conversions == []  # all of it is fedcore's and Keras's code: none needs AutoGraph
    assert len(calls) == 1  # the Keras model is built once
    # start_training, train_on_batch, finish_training, server init and update, the metrics' finish: once each
    assert len(traces) == len(set(traces)) and len(traces) <= 8, traces


def test_library_modules_are_not_converted_but_fedcore_testing_is():
    from tensorflow.python.autograph.impl import conversion

    from fedcore import structure
    from fedcore.learning import model_functions
    from fedcore.testing.conformance.cases import common

    assert conversion.is_allowlisted(structure.python_items)
    assert conversion.is_allowlisted(model_functions.field)
    assert not conversion.is_allowlisted(common.__dict__[next(
        n for n, v in vars(common).items() if callable(v) and getattr(v, "__module__", None) == common.__name__
        and not isinstance(v, type))])


def _helper_with_a_branch(x):
    if tf.reduce_sum(x) > 0:  # converted: called from a user's tf_computation
        return x * 2.0
    return -x


def test_user_code_keeps_python_control_flow_over_tensors(conversions):
    @fedcore.tf_computation(fedcore.SequenceType(tf.float32), tf.float32)
    def f(ds, y):
        total = tf.constant(0.0)
        for x in ds:  # a loop over a dataset
            total += x
        if total > y:  # a branch on a tensor
            total = total - y
        parts = []  # a plain Python list of tensors stays a list
        for i in range(3):
            parts.append(total * float(i))
        return tf.add_n(parts) + _helper_with_a_branch(y)

    assert f([1.0, 2.0, 3.0], 1.0) == pytest.approx((6.0 - 1.0) * 3.0 + 2.0)
    assert f([1.0], 5.0) == pytest.approx(3.0 + 10.0)
    modules = set(conversions)
    assert __name__ in modules and not any(m.startswith(("fedcore.", "keras", "attr")) for m in modules)


def test_call_user_code_runs_eagerly_without_converting(conversions):
    assert tf_function.call_user_code(_helper_with_a_branch, tf.constant(1.0)).numpy() == 2.0
    assert conversions == []


class BranchingModel(MnistModel):
    """The tutorial's model with a plain-Python forward pass (no tf.function) that branches on a tensor."""

    def forward_pass(self, batch, training=True):
        if tf.reduce_min(batch["x"]) >= 0.0:  # always true for pixels: the same results as MnistModel
            loss, predictions, num_examples = mnist_forward_pass(self._variables, batch)
        else:
            loss, predictions, num_examples = mnist_forward_pass(self._variables, batch)
            loss = loss + 1.0
        return learning.BatchOutput(loss=loss, predictions=predictions, num_examples=num_examples)


def _branching_loss(y_true, y_pred):
    loss = tf.keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    if tf.reduce_mean(loss) < 0.0:  # never: a loss is not negative
        loss = -loss
    return loss


def test_a_custom_models_methods_and_a_loss_function_are_converted():
    data = helpers.federated_train_data(2)
    states = {}
    for name, model_fn in [("branching", BranchingModel), ("tf.function", MnistModel)]:
        process = learning.build_federated_averaging_process(model_fn, client_optimizer_fn=lambda: learning.optimizers.SGD(0.1))
        with fedcore.execution_context(TensorFlowExecutor()):
            states[name] = process.next(process.initialize(), data)
    a, b = (s[0].model.trainable for s in (states["branching"], states["tf.function"]))
    for x, y in zip(a.values() if isinstance(a, dict) else a, b.values() if isinstance(b, dict) else b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    keras_fn = lambda: learning.from_keras_model(  # noqa: E731
        helpers.seed_keras_model(), _branching_loss, helpers.INPUT_SPEC)
    process = learning.build_federated_averaging_process(keras_fn, client_optimizer_fn=lambda: learning.optimizers.SGD(0.1))
    with fedcore.execution_context(TensorFlowExecutor()):
        state, metrics = process.next(process.initialize(), data)
    assert np.isfinite(metrics["train"]["loss"] if "train" in metrics else metrics["loss"])

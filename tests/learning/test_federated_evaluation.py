"""Federated evaluation: the seed's signature, metric values, Keras and custom models agreeing."""

import collections

import numpy as np
import pytest

import fedcore
from fedcore import learning
from fedcore.runtime.tensorflow import TensorFlowExecutor

from tests.learning.helpers import federated_test_data, keras_model_fn
from tests.learning.mnist_models import MnistModel


@pytest.fixture(scope="module")
def mnist_evaluation():
    return learning.build_federated_evaluation(MnistModel)


def test_seed_mnist_model_signature(mnist_evaluation):
    assert str(mnist_evaluation.type_signature) == (
        "(<<trainable=<weights=float32[784,10],bias=float32[10]>,non_trainable=<>>@SERVER,"
        "{<x=float32[?,784],y=int32[?]>*}@CLIENTS> -> "
        "<accuracy=float32@SERVER,loss=float32@SERVER,num_examples=float32@SERVER>)"
    )


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(784, 10)).astype(np.float32) * 0.05, rng.normal(size=10).astype(np.float32) * 0.1


def _expected_metrics(datasets, kernel, bias):
    examples = [e for ds in datasets for e in ds.unbatch().as_numpy_iterator()]
    x = np.stack([e["x"] for e in examples]).astype(np.float64)
    y = np.stack([e["y"] for e in examples])
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y]))
    return np.mean(np.argmax(p, 1) == y), loss, len(y)


def test_metrics_are_over_all_examples_and_both_model_kinds_agree(mnist_evaluation):
    data = federated_test_data()[:6]
    kernel, bias = _weights()
    accuracy, loss, n = _expected_metrics(data, kernel, bias)
    custom = mnist_evaluation(
        learning.ModelWeights(collections.OrderedDict(weights=kernel, bias=bias), collections.OrderedDict()), data
    )
    assert isinstance(custom, collections.OrderedDict)
    np.testing.assert_allclose(custom["accuracy"], accuracy, rtol=1e-5)
    np.testing.assert_allclose(custom["loss"], loss, rtol=1e-4)
    assert custom["num_examples"] == n
    keras_evaluation = learning.build_federated_evaluation(keras_model_fn)
    assert str(keras_evaluation.type_signature.result) == "<accuracy=float32,loss=float32,num_examples=int64>@SERVER"
    keras_weights = learning.ModelWeights(
        collections.OrderedDict([("dense/kernel", kernel), ("dense/bias", bias)]), collections.OrderedDict()
    )
    for executor in (fedcore.ReferenceExecutor(), TensorFlowExecutor()):
        with fedcore.execution_context(executor):
            result = keras_evaluation(keras_weights, data)
        np.testing.assert_allclose(result["accuracy"], accuracy, rtol=1e-5)
        np.testing.assert_allclose(result["loss"], loss, rtol=1e-4)
        assert result["num_examples"] == n


def test_custom_model_evaluation_on_the_tensorflow_executor(mnist_evaluation):
    data = federated_test_data()[:3]
    kernel, bias = _weights(1)
    weights = learning.ModelWeights(collections.OrderedDict(weights=kernel, bias=bias), collections.OrderedDict())
    expected = mnist_evaluation(weights, data)
    with fedcore.execution_context(TensorFlowExecutor(strategy="sequential")):
        got = mnist_evaluation(weights, data)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)


def test_evaluation_takes_a_training_state_model():
    process = learning.build_federated_averaging_process(keras_model_fn)
    evaluation = learning.build_federated_evaluation(keras_model_fn)
    state = process.initialize()
    result = evaluation(state.model, federated_test_data()[:2])
    np.testing.assert_allclose(result["loss"], np.log(10.0), rtol=1e-5)  # zero weights: uniform predictions

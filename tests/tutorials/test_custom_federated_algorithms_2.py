"""TFF's tutorial "Custom Federated Algorithms, Part 2: Implementing Federated Averaging", as tests.

The code cells of ``docs/tutorials/custom_federated_algorithms_2.ipynb`` (TFF
at commit 12f9af62b, 2021-09-02), in order, with ``tff.`` written ``fedcore.``.
MNIST comes from ``substitutes.mnist_load_data()`` (the embedded digits, in
Keras' MNIST format) and, as the digits have about 120 training images per
digit, every user holds 100 examples in 10 batches of 10 (the tutorial: 1000
in 10 batches of 100).  The notebook's numbers that do not depend on the data
(a zero model's loss is ln 10 per batch) are checked exactly; the trained
models are checked against the same steps done in plain eager TensorFlow.
The type signatures name their parameters, as the notebook prints them since
TFF's re-run of it at commit 4bbf4bc7f (2021-12-02); older runs printed
unnamed parameters.
"""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from tests.tutorials import substitutes

LN_10 = math.log(10.0)

mnist_train, mnist_test = substitutes.mnist_load_data()

NUM_EXAMPLES_PER_USER = 100
BATCH_SIZE = 10


def get_data_for_digit(source, digit):
    output_sequence = []
    all_samples = [i for i, d in enumerate(source[1]) if d == digit]
    for i in range(0, min(len(all_samples), NUM_EXAMPLES_PER_USER), BATCH_SIZE):
        batch_samples = all_samples[i:i + BATCH_SIZE]
        output_sequence.append({
            'x':
                np.array([source[0][i].flatten() / 255.0 for i in batch_samples],
                         dtype=np.float32),
            'y':
                np.array([source[1][i] for i in batch_samples], dtype=np.int32)
        })
    return output_sequence


federated_train_data = [get_data_for_digit(mnist_train, d) for d in range(10)]

federated_test_data = [get_data_for_digit(mnist_test, d) for d in range(10)]

BATCH_SPEC = collections.OrderedDict(
    x=tf.TensorSpec(shape=[None, 784], dtype=tf.float32),
    y=tf.TensorSpec(shape=[None], dtype=tf.int32))
BATCH_TYPE = fedcore.to_type(BATCH_SPEC)

MODEL_SPEC = collections.OrderedDict(
    weights=tf.TensorSpec(shape=[784, 10], dtype=tf.float32),
    bias=tf.TensorSpec(shape=[10], dtype=tf.float32))
MODEL_TYPE = fedcore.to_type(MODEL_SPEC)

initial_model = collections.OrderedDict(
    weights=np.zeros([784, 10], dtype=np.float32),
    bias=np.zeros([10], dtype=np.float32))

sample_batch = federated_train_data[5][-1]


# Called from other tf.functions, which cannot call a tf_computation.
@tf.function
def forward_pass(model, batch):
    predicted_y = tf.nn.softmax(
        tf.matmul(batch['x'], model['weights']) + model['bias'])
    return -tf.reduce_mean(
        tf.reduce_sum(
            tf.one_hot(batch['y'], 10) * tf.math.log(predicted_y), axis=[1]))


# The computations are made by fixtures, so that a computation fedcore cannot
# trace fails only the tests that use it.

@pytest.fixture(scope="module")
def batch_loss():
    @fedcore.tf_computation(MODEL_TYPE, BATCH_TYPE)
    def batch_loss(model, batch):
        return forward_pass(model, batch)

    return batch_loss


@pytest.fixture(scope="module")
def batch_train():
    @fedcore.tf_computation(MODEL_TYPE, BATCH_TYPE, tf.float32)
    def batch_train(initial_model, batch, learning_rate):
        # The model's variables, set to `initial_model`, made outside the tf.function.
        model_vars = collections.OrderedDict([
            (name, tf.Variable(name=name, initial_value=value))
            for name, value in initial_model.items()
        ])
        # Keras 3 takes a tensor learning rate only as a callable.
        optimizer = tf.keras.optimizers.SGD(lambda: learning_rate)

        @tf.function
        def _train_on_batch(model_vars, batch):
            # One step of gradient descent on the loss of `batch`.
            with tf.GradientTape() as tape:
                loss = forward_pass(model_vars, batch)
            grads = tape.gradient(loss, model_vars)
            optimizer.apply_gradients(
                zip(tf.nest.flatten(grads), tf.nest.flatten(model_vars)))
            return model_vars

        return _train_on_batch(model_vars, batch)

    return batch_train


LOCAL_DATA_TYPE = fedcore.SequenceType(BATCH_TYPE)


@pytest.fixture(scope="module")
def local_train(batch_train):
    @fedcore.federated_computation(MODEL_TYPE, tf.float32, LOCAL_DATA_TYPE)
    def local_train(initial_model, learning_rate, all_batches):

        # Applied to each batch in turn.
        @fedcore.federated_computation(MODEL_TYPE, BATCH_TYPE)
        def batch_fn(model, batch):
            return batch_train(model, batch, learning_rate)

        return fedcore.sequence_reduce(all_batches, initial_model, batch_fn)

    return local_train


@pytest.fixture(scope="module")
def local_eval(batch_loss):
    @fedcore.federated_computation(MODEL_TYPE, LOCAL_DATA_TYPE)
    def local_eval(model, all_batches):
        return fedcore.sequence_sum(
            fedcore.sequence_map(
                fedcore.federated_computation(lambda b: batch_loss(model, b), BATCH_TYPE),
                all_batches))

    return local_eval


SERVER_MODEL_TYPE = fedcore.type_at_server(MODEL_TYPE)
CLIENT_DATA_TYPE = fedcore.type_at_clients(LOCAL_DATA_TYPE)


@pytest.fixture(scope="module")
def federated_eval(local_eval):
    @fedcore.federated_computation(SERVER_MODEL_TYPE, CLIENT_DATA_TYPE)
    def federated_eval(model, data):
        return fedcore.federated_mean(
            fedcore.federated_map(local_eval, [fedcore.federated_broadcast(model), data]))

    return federated_eval


SERVER_FLOAT_TYPE = fedcore.type_at_server(tf.float32)


@pytest.fixture(scope="module")
def federated_train(local_train):
    @fedcore.federated_computation(SERVER_MODEL_TYPE, SERVER_FLOAT_TYPE,
                                   CLIENT_DATA_TYPE)
    def federated_train(model, learning_rate, data):
        return fedcore.federated_mean(
            fedcore.federated_map(local_train, [
                fedcore.federated_broadcast(model),
                fedcore.federated_broadcast(learning_rate), data
            ]))

    return federated_train


# The oracle: the tutorial's steps in plain eager TensorFlow, without fedcore.

def eager_loss(model, batch):
    return float(forward_pass({k: tf.constant(v) for k, v in model.items()}, batch))


def eager_sgd(model, batches, learning_rate):
    weights = {k: tf.Variable(v) for k, v in model.items()}
    for batch in batches:
        with tf.GradientTape() as tape:
            loss = forward_pass(weights, batch)
        grads = tape.gradient(loss, weights)
        for name in weights:
            weights[name].assign_sub(learning_rate * grads[name])
    return collections.OrderedDict((k, v.numpy()) for k, v in weights.items())


def eager_federated_train(model, learning_rate, data):
    trained = [eager_sgd(model, batches, learning_rate) for batches in data]
    return collections.OrderedDict((k, np.mean([t[k] for t in trained], axis=0)) for k in model)


def assert_models_close(actual, expected):
    assert list(actual.keys()) == list(expected.keys())
    for name in expected:
        np.testing.assert_allclose(np.asarray(actual[name]), expected[name], rtol=1e-4, atol=1e-6)


def test_data():
    assert [(x.dtype, x.shape) for x in mnist_train] == [
        (np.dtype('uint8'), (substitutes.MNIST_TRAIN_SIZE, 28, 28)),
        (np.dtype('uint8'), (substitutes.MNIST_TRAIN_SIZE,)),
    ]
    assert all(len(batches) == 10 for batches in federated_train_data)
    assert federated_train_data[5][-1]['y'].tolist() == [5] * BATCH_SIZE
    assert federated_train_data[5][-1]['x'].shape == (BATCH_SIZE, 784)


def test_types():
    assert str(BATCH_TYPE) == '<x=float32[?,784],y=int32[?]>'
    assert str(MODEL_TYPE) == '<weights=float32[784,10],bias=float32[10]>'


def test_batch_loss(executor, batch_loss):
    assert str(batch_loss.type_signature) == (
        '(<model=<weights=float32[784,10],bias=float32[10]>,batch=<x=float32[?,784],y=int32[?]>> -> float32)')
    # The zero model predicts 1/10 for every digit: the loss is ln 10 (the notebook: 2.3025854).
    assert batch_loss(initial_model, sample_batch) == pytest.approx(LN_10, rel=1e-6)


def test_batch_train(executor, batch_train, batch_loss):
    assert str(batch_train.type_signature) == (
        '(<initial_model=<weights=float32[784,10],bias=float32[10]>,batch=<x=float32[?,784],y=int32[?]>,'
        'learning_rate=float32> '
        '-> <weights=float32[784,10],bias=float32[10]>)')

    model = initial_model
    losses = []
    for _ in range(5):
        model = batch_train(model, sample_batch, 0.1)
        losses.append(batch_loss(model, sample_batch))

    expected_model, expected_losses = initial_model, []
    for _ in range(5):
        expected_model = eager_sgd(expected_model, [sample_batch], 0.1)
        expected_losses.append(eager_loss(expected_model, sample_batch))
    assert losses == pytest.approx(expected_losses, rel=1e-4)
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * LN_10
    assert_models_close(model, expected_model)


def test_local_train(executor, local_train):
    assert str(local_train.type_signature) == (
        '(<initial_model=<weights=float32[784,10],bias=float32[10]>,learning_rate=float32,'
        'all_batches=<x=float32[?,784],y=int32[?]>*> '
        '-> <weights=float32[784,10],bias=float32[10]>)')
    locally_trained_model = local_train(initial_model, 0.1, federated_train_data[5])
    assert_models_close(locally_trained_model, eager_sgd(initial_model, federated_train_data[5], 0.1))


# The model that local_train makes from the 5s (test_local_train checks that it does),
# so that the evaluation tests do not depend on training.
locally_trained_model = eager_sgd(initial_model, federated_train_data[5], 0.1)


def test_local_eval(executor, local_eval):
    assert str(local_eval.type_signature) == (
        '(<model=<weights=float32[784,10],bias=float32[10]>,all_batches=<x=float32[?,784],y=int32[?]>*> -> float32)')

    # 10 batches of loss ln 10 each (the notebook: 23.025854).
    assert local_eval(initial_model, federated_train_data[5]) == pytest.approx(10 * LN_10, rel=1e-6)
    trained_on_5 = local_eval(locally_trained_model, federated_train_data[5])
    assert trained_on_5 == pytest.approx(
        sum(eager_loss(locally_trained_model, b) for b in federated_train_data[5]), rel=1e-4)
    assert trained_on_5 < 10 * LN_10

    # A model trained only on 5s does worse than the zero model on 0s (the notebook: 74.5 > 23.0).
    assert local_eval(initial_model, federated_train_data[0]) == pytest.approx(10 * LN_10, rel=1e-6)
    assert local_eval(locally_trained_model, federated_train_data[0]) > 10 * LN_10


def test_federated_eval(executor, federated_eval):
    assert federated_eval(initial_model, federated_train_data) == pytest.approx(10 * LN_10, rel=1e-6)
    expected = np.mean([sum(eager_loss(locally_trained_model, b) for b in batches)
                        for batches in federated_train_data])
    assert federated_eval(locally_trained_model, federated_train_data) == pytest.approx(expected, rel=1e-4)


def test_federated_train(executor, federated_train, federated_eval):
    model = initial_model
    expected_model = initial_model
    learning_rate = 0.1
    losses = []
    for round_num in range(2):  # the tutorial: 5 rounds
        model = federated_train(model, learning_rate, federated_train_data)
        expected_model = eager_federated_train(expected_model, learning_rate, federated_train_data)
        learning_rate = learning_rate * 0.9
        loss = federated_eval(model, federated_train_data)
        losses.append(loss)
    assert_models_close(model, expected_model)
    assert losses == sorted(losses, reverse=True) and losses[0] < 10 * LN_10

    initial_test_loss = federated_eval(initial_model, federated_test_data)
    trained_test_loss = federated_eval(model, federated_test_data)
    assert initial_test_loss == pytest.approx(np.mean([len(b) for b in federated_test_data]) * LN_10, rel=1e-6)
    assert trained_test_loss < initial_test_loss

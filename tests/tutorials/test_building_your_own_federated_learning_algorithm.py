"""TFF's tutorial "Building Your Own Federated Learning Algorithm", as tests.

The code cells of ``docs/tutorials/building_your_own_federated_learning_algorithm.ipynb``
(TFF at commit 12f9af62b, 2021-09-02), in order, with ``tff.`` written
``fedcore.``.  Federated EMNIST comes from ``substitutes.emnist_load_data()``
(the embedded digits, with EMNIST's element structure).  Nothing here is
shuffled and the model starts from seeded weights, so the rounds are checked
against the same federated averaging done in plain eager Keras.  Training
runs ROUNDS rounds (the tutorial: 15).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from tests.tutorials import substitutes

ROUNDS = 2

emnist_train, emnist_test = substitutes.emnist_load_data()

NUM_CLIENTS = 10
BATCH_SIZE = 20


def preprocess(dataset):

    def batch_format_fn(element):
        """A batch of EMNIST, flattened, as a (features, label) tuple."""
        return (tf.reshape(element['pixels'], [-1, 784]),
                tf.reshape(element['label'], [-1, 1]))

    return dataset.batch(BATCH_SIZE).map(batch_format_fn)


client_ids = sorted(emnist_train.client_ids)[:NUM_CLIENTS]
federated_train_data = [preprocess(emnist_train.create_tf_dataset_for_client(x))
                        for x in client_ids
                        ]


def create_keras_model():
    initializer = tf.keras.initializers.GlorotNormal(seed=0)
    return tf.keras.models.Sequential([
        tf.keras.layers.Input(shape=(784,)),
        tf.keras.layers.Dense(10, kernel_initializer=initializer),
        tf.keras.layers.Softmax(),
    ])


def model_fn():
    keras_model = create_keras_model()
    return fedcore.learning.from_keras_model(
        keras_model,
        input_spec=federated_train_data[0].element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])


def test_the_model():
    def initialize_fn():
        model = model_fn()
        return model.trainable_variables

    kernel, bias = initialize_fn()
    assert kernel.shape == (784, 10) and bias.shape == (10,)
    # Seeded: every model starts from the same weights.
    np.testing.assert_array_equal(kernel.numpy(), create_keras_model().get_weights()[0])


@tf.function
def client_update(model, dataset, server_weights, client_optimizer):
    """Trains the model, starting from the server's weights, on the client's dataset."""
    # The client's model, set to the server's weights.
    client_weights = model.trainable_variables
    tf.nest.map_structure(lambda x, y: x.assign(y),
                          client_weights, server_weights)

    # A step of the client optimizer on every batch.
    for batch in dataset:
        with tf.GradientTape() as tape:
            outputs = model.forward_pass(batch)

        grads = tape.gradient(outputs.loss, client_weights)
        grads_and_vars = zip(grads, client_weights)

        client_optimizer.apply_gradients(grads_and_vars)

    return client_weights


@tf.function
def server_update(model, mean_client_weights):
    """The server's model becomes the mean of the clients' models."""
    model_weights = model.trainable_variables
    tf.nest.map_structure(lambda x, y: x.assign(y),
                          model_weights, mean_client_weights)
    return model_weights


def test_federated_core_examples(executor):
    federated_float_on_clients = fedcore.FederatedType(tf.float32, fedcore.CLIENTS)
    assert str(federated_float_on_clients) == '{float32}@CLIENTS'

    @fedcore.federated_computation(fedcore.FederatedType(tf.float32, fedcore.CLIENTS))
    def get_average_temperature(client_temperatures):
        return fedcore.federated_mean(client_temperatures)

    assert str(get_average_temperature.type_signature) == '({float32}@CLIENTS -> float32@SERVER)'
    assert get_average_temperature([68.5, 70.3, 69.8]) == pytest.approx(69.53333, abs=1e-4)

    @fedcore.tf_computation(tf.float32)
    def add_half(x):
        return tf.add(x, 0.5)

    assert str(add_half.type_signature) == '(float32 -> float32)'

    @fedcore.federated_computation(fedcore.FederatedType(tf.float32, fedcore.CLIENTS))
    def add_half_on_clients(x):
        return fedcore.federated_map(add_half, x)

    assert str(add_half_on_clients.type_signature) == '({float32}@CLIENTS -> {float32}@CLIENTS)'
    assert [float(x) for x in add_half_on_clients([1.0, 2.0])] == [1.5, 2.5]


# The computations are made by fixtures, so that one fedcore cannot trace
# fails only the tests that use it.

@pytest.fixture(scope="module")
def server_init():
    @fedcore.tf_computation
    def server_init():
        model = model_fn()
        return model.trainable_variables

    return server_init


@pytest.fixture(scope="module")
def initialize_fn(server_init):
    @fedcore.federated_computation
    def initialize_fn():
        return fedcore.federated_value(server_init(), fedcore.SERVER)

    return initialize_fn


whimsy_model = model_fn()
tf_dataset_type = fedcore.SequenceType(whimsy_model.input_spec)


def test_dataset_type():
    assert str(tf_dataset_type) == '<float32[?,784],int32[?,1]>*'


@pytest.fixture(scope="module")
def model_weights_type(server_init):
    model_weights_type = server_init.type_signature.result
    return model_weights_type


@pytest.fixture(scope="module")
def client_update_fn(model_weights_type):
    @fedcore.tf_computation(tf_dataset_type, model_weights_type)
    def client_update_fn(tf_dataset, server_weights):
        model = model_fn()
        client_optimizer = tf.keras.optimizers.SGD(learning_rate=0.01)
        return client_update(model, tf_dataset, server_weights, client_optimizer)

    return client_update_fn


@pytest.fixture(scope="module")
def server_update_fn(model_weights_type):
    @fedcore.tf_computation(model_weights_type)
    def server_update_fn(mean_client_weights):
        model = model_fn()
        return server_update(model, mean_client_weights)

    return server_update_fn


@pytest.fixture(scope="module")
def next_fn(model_weights_type, client_update_fn, server_update_fn):
    federated_server_type = fedcore.FederatedType(model_weights_type, fedcore.SERVER)
    federated_dataset_type = fedcore.FederatedType(tf_dataset_type, fedcore.CLIENTS)

    @fedcore.federated_computation(federated_server_type, federated_dataset_type)
    def next_fn(server_weights, federated_dataset):
        # The server's weights, sent to the clients.
        server_weights_at_client = fedcore.federated_broadcast(server_weights)

        # Every client trains from them.
        client_weights = fedcore.federated_map(
            client_update_fn, (federated_dataset, server_weights_at_client))

        # The server averages the clients' weights.
        mean_client_weights = fedcore.federated_mean(client_weights)

        # And makes them its model.
        server_weights = fedcore.federated_map(server_update_fn, mean_client_weights)

        return server_weights

    return next_fn


@pytest.fixture(scope="module")
def federated_algorithm(initialize_fn, next_fn):
    federated_algorithm = fedcore.templates.IterativeProcess(
        initialize_fn=initialize_fn,
        next_fn=next_fn
    )
    return federated_algorithm


def test_model_weights_type(model_weights_type):
    assert str(model_weights_type) == '<float32[784,10],float32[10]>'


def test_initialize(executor, initialize_fn):
    kernel, bias = initialize_fn()
    expected_kernel, expected_bias = create_keras_model().get_weights()
    np.testing.assert_array_equal(kernel, expected_kernel)
    np.testing.assert_array_equal(bias, expected_bias)


def test_client_and_server_update(executor, client_update_fn, server_update_fn):
    server_weights = create_keras_model().get_weights()
    trained = client_update_fn(federated_train_data[0], server_weights)
    for actual, expected in zip(trained, eager_client_update(federated_train_data[0], server_weights)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    for actual, expected in zip(server_update_fn(server_weights), server_weights):
        np.testing.assert_array_equal(actual, expected)


def test_next_type_signature(next_fn):
    assert str(next_fn.type_signature) == (
        '(<server_weights=<float32[784,10],float32[10]>@SERVER,'
        'federated_dataset={<float32[?,784],int32[?,1]>*}@CLIENTS> -> <float32[784,10],float32[10]>@SERVER)')


def test_iterative_process_type_signatures(federated_algorithm):
    assert str(federated_algorithm.initialize.type_signature) == '( -> <float32[784,10],float32[10]>@SERVER)'
    assert str(federated_algorithm.next.type_signature) == (
        '(<server_weights=<float32[784,10],float32[10]>@SERVER,'
        'federated_dataset={<float32[?,784],int32[?,1]>*}@CLIENTS> -> <float32[784,10],float32[10]>@SERVER)')


central_emnist_test = emnist_test.create_tf_dataset_from_all_clients()
central_emnist_test = preprocess(central_emnist_test)


def evaluate(server_state):
    keras_model = create_keras_model()
    keras_model.compile(
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()]
    )
    keras_model.set_weights(server_state)
    # The tutorial prints Keras' progress bar; the test keeps the [loss, accuracy] it returns.
    return keras_model.evaluate(central_emnist_test, verbose=0)


# The oracle: the same algorithm in plain eager Keras, without fedcore.

def eager_client_update(dataset, server_weights):
    model = create_keras_model()
    model.set_weights(server_weights)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.01)
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return model.get_weights()


def eager_round(server_weights, datasets):
    trained = [eager_client_update(d, server_weights) for d in datasets]
    return [np.mean([t[i] for t in trained], axis=0) for i in range(len(server_weights))]


@functools.lru_cache(maxsize=1)
def eager_training():
    """The server's weights after ROUNDS rounds, computed once for both executors."""
    server_weights = create_keras_model().get_weights()
    for _ in range(ROUNDS):
        server_weights = eager_round(server_weights, federated_train_data)
    return server_weights


def test_training(executor, federated_algorithm):
    server_state = federated_algorithm.initialize()
    initial_loss, _ = evaluate(server_state)

    for round in range(ROUNDS):
        server_state = federated_algorithm.next(server_state, federated_train_data)

    for actual, expected in zip(server_state, eager_training()):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    final_loss, _ = evaluate(server_state)
    assert final_loss < initial_loss  # the notebook: 2.8479 before, 2.5867 after 15 rounds

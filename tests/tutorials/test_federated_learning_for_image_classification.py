"""TFF's tutorial "Federated Learning for Image Classification", as tests.

The code cells of ``docs/tutorials/federated_learning_for_image_classification.ipynb``
(TFF at commit ba3134224, 2020-10-21), in order, with ``tff.`` written
``fedcore.``.  Federated EMNIST comes from ``substitutes.emnist_load_data()``
(the embedded digits, with EMNIST's element structure, over 20 writers).  The
plots are not drawn; the data they show is checked instead.  Training runs
ROUNDS rounds of NUM_EPOCHS epochs on NUM_CLIENTS clients (the tutorial:
10 rounds of 5 epochs on 10 clients).
The notebook's numbers come from other data, and a few rounds of this
training on shuffled data move the loss up as often as down, so the tests
check what holds for any data: the example counts, the zero model's loss
(ln 10) and accuracy (the share of 0s), finite metrics and a changed model.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from tests.tutorials import substitutes

ROUNDS = 2

np.random.seed(0)

emnist_train, emnist_test = substitutes.emnist_load_data()

NUM_CLIENTS = 5  # the tutorial: 10
NUM_EPOCHS = 1  # the tutorial: 5
BATCH_SIZE = 20
SHUFFLE_BUFFER = 100
PREFETCH_BUFFER = 10


def preprocess(dataset):

    def batch_format_fn(element):
        """The batch's `pixels` flattened, and the label, as an `OrderedDict`."""
        return collections.OrderedDict(
            x=tf.reshape(element['pixels'], [-1, 784]),
            y=tf.reshape(element['label'], [-1, 1]))

    return dataset.repeat(NUM_EPOCHS).shuffle(SHUFFLE_BUFFER).batch(
        BATCH_SIZE).map(batch_format_fn).prefetch(PREFETCH_BUFFER)


example_dataset = emnist_train.create_tf_dataset_for_client(
    emnist_train.client_ids[0])
preprocessed_example_dataset = preprocess(example_dataset)


def make_federated_data(client_data, client_ids):
    return [
        preprocess(client_data.create_tf_dataset_for_client(x))
        for x in client_ids
    ]


sample_clients = emnist_train.client_ids[0:NUM_CLIENTS]
federated_train_data = make_federated_data(emnist_train, sample_clients)
federated_test_data = make_federated_data(emnist_test, sample_clients)


def label_counts(client_data, client_ids):
    labels = [int(e['label']) for c in client_ids for e in client_data.create_tf_dataset_for_client(c)]
    return np.bincount(labels, minlength=10)


def numpy_metrics(weights, bias, client_data, client_ids):
    """The tutorial's mean cross-entropy and accuracy of a linear softmax model, in numpy."""
    examples = [e for c in client_ids for e in client_data.create_tf_dataset_for_client(c)]
    x = np.stack([np.reshape(e['pixels'], [784]) for e in examples]).astype(np.float64)
    y = np.array([int(e['label']) for e in examples])
    logits = x @ np.asarray(weights, np.float64) + np.asarray(bias, np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_softmax[np.arange(len(y)), y].mean()
    accuracy = (np.argmax(logits, axis=1) == y).mean()
    return loss, accuracy


def test_hello_world(executor):
    # TFF returns b'Hello, World!'.
    assert fedcore.federated_computation(lambda: 'Hello, World!')() == 'Hello, World!'


def test_the_data():
    assert len(emnist_train.client_ids) == substitutes.EMNIST_CLIENTS  # EMNIST: 3383 writers
    # TFF gives the structure as tf.TensorSpecs, which fedcore has as element_spec.
    assert str(emnist_train.element_type_structure) == '<label=int32,pixels=float32[28,28]>'
    assert emnist_train.element_spec == collections.OrderedDict(
        label=tf.TensorSpec(shape=(), dtype=tf.int32),
        pixels=tf.TensorSpec(shape=(28, 28), dtype=tf.float32))

    example_element = next(iter(example_dataset))
    assert example_element['label'].numpy() in range(10)
    assert example_element['pixels'].numpy().shape == (28, 28)


def test_the_clients_differ():
    # The label counts of a few clients (plotted in the tutorial): far from uniform.
    for i in range(6):
        client_dataset = emnist_train.create_tf_dataset_for_client(
            emnist_train.client_ids[i])
        plot_data = collections.defaultdict(list)
        for example in client_dataset:
            label = example['label'].numpy()
            plot_data[label].append(label)
        counts = np.array([len(plot_data[j]) for j in range(10)])
        assert counts.max() > 2 * counts.mean()

    # Each client's mean image per label (plotted in the tutorial) differs between clients.
    mean_images = []
    for i in range(2):
        client_dataset = emnist_train.create_tf_dataset_for_client(
            emnist_train.client_ids[i])
        plot_data = collections.defaultdict(list)
        for example in client_dataset:
            plot_data[example['label'].numpy()].append(example['pixels'].numpy())
        mean_images.append({j: np.mean(plot_data[j], 0) for j in plot_data})
    shared = set(mean_images[0]) & set(mean_images[1])
    assert shared and all(not np.allclose(mean_images[0][j], mean_images[1][j]) for j in shared)


def test_preprocessing():
    sample_batch = tf.nest.map_structure(lambda x: x.numpy(),
                                         next(iter(preprocessed_example_dataset)))
    assert list(sample_batch) == ['x', 'y']
    assert sample_batch['x'].shape == (BATCH_SIZE, 784) and sample_batch['x'].dtype == np.float32
    assert sample_batch['y'].shape == (BATCH_SIZE, 1) and sample_batch['y'].dtype == np.int32

    assert len(federated_train_data) == NUM_CLIENTS
    assert federated_train_data[0].element_spec == collections.OrderedDict(
        x=tf.TensorSpec(shape=(None, 784), dtype=tf.float32),
        y=tf.TensorSpec(shape=(None, 1), dtype=tf.int32))


def create_keras_model():
    return tf.keras.models.Sequential([
        tf.keras.layers.Input(shape=(784,)),
        tf.keras.layers.Dense(10, kernel_initializer='zeros'),
        tf.keras.layers.Softmax(),
    ])


def model_fn():
    # A new model on every call: the algorithms build it in their own graphs.
    keras_model = create_keras_model()
    return fedcore.learning.from_keras_model(
        keras_model,
        input_spec=preprocessed_example_dataset.element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])


# The processes are built (traced) once, and run by each test on its executor.

@pytest.fixture(scope="module")
def keras_iterative_process():
    iterative_process = fedcore.learning.build_federated_averaging_process(
        model_fn,
        client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.02),
        server_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=1.0))
    return iterative_process


def test_keras_type_signature(keras_iterative_process):
    iterative_process = keras_iterative_process
    # TFF: '( -> <model=<trainable=<float32[784,10],float32[10]>,non_trainable=<>>,'
    #      'optimizer_state=<int64>,delta_aggregate_state=<>,model_broadcast_state=<>>@SERVER)'
    assert str(iterative_process.initialize.type_signature) == (
        '( -> <model=<trainable=<dense/kernel=float32[784,10],dense/bias=float32[10]>,'
        'non_trainable=<>>,optimizer_state=<int64>>@SERVER)')


def check_metrics(metrics, expected_examples):
    assert metrics['num_examples'] == expected_examples
    assert 0 < metrics['loss'] < 100 and 0 <= metrics['sparse_categorical_accuracy'] <= 1


def test_training_a_keras_model(executor, keras_iterative_process):
    iterative_process = keras_iterative_process
    train_examples = NUM_EPOCHS * label_counts(emnist_train, sample_clients).sum()

    state = iterative_process.initialize()
    kernel = state.model.trainable['dense/kernel']
    assert kernel.shape == (784, 10) and not kernel.any()

    state, metrics = iterative_process.next(state, federated_train_data)
    # TFF nests the metrics: metrics['train']['loss']; fedcore's are flat.
    check_metrics(metrics, train_examples)

    for round_num in range(2, ROUNDS + 1):
        state, metrics = iterative_process.next(state, federated_train_data)
        check_metrics(metrics, train_examples)

    assert state.optimizer_state[0] == ROUNDS  # the server optimizer's step count
    kernel = state.model.trainable['dense/kernel']
    assert np.isfinite(kernel).all() and kernel.any()


MnistVariables = collections.namedtuple(
    'MnistVariables', 'weights bias num_examples loss_sum accuracy_sum')


def create_mnist_variables():
    return MnistVariables(
        weights=tf.Variable(
            lambda: tf.zeros(dtype=tf.float32, shape=(784, 10)),
            name='weights',
            trainable=True),
        bias=tf.Variable(
            lambda: tf.zeros(dtype=tf.float32, shape=(10)),
            name='bias',
            trainable=True),
        num_examples=tf.Variable(0.0, name='num_examples', trainable=False),
        loss_sum=tf.Variable(0.0, name='loss_sum', trainable=False),
        accuracy_sum=tf.Variable(0.0, name='accuracy_sum', trainable=False))


def mnist_forward_pass(variables, batch):
    y = tf.nn.softmax(tf.matmul(batch['x'], variables.weights) + variables.bias)
    predictions = tf.cast(tf.argmax(y, 1), tf.int32)

    flat_labels = tf.reshape(batch['y'], [-1])
    loss = -tf.reduce_mean(
        tf.reduce_sum(tf.one_hot(flat_labels, 10) * tf.math.log(y), axis=[1]))
    accuracy = tf.reduce_mean(
        tf.cast(tf.equal(predictions, flat_labels), tf.float32))

    num_examples = tf.cast(tf.size(batch['y']), tf.float32)

    variables.num_examples.assign_add(num_examples)
    variables.loss_sum.assign_add(loss * num_examples)
    variables.accuracy_sum.assign_add(accuracy * num_examples)

    return loss, predictions


def get_local_mnist_metrics(variables):
    return collections.OrderedDict(
        num_examples=variables.num_examples,
        loss=variables.loss_sum / variables.num_examples,
        accuracy=variables.accuracy_sum / variables.num_examples)


@fedcore.federated_computation
def aggregate_mnist_metrics_across_clients(metrics):
    return collections.OrderedDict(
        num_examples=fedcore.federated_sum(metrics.num_examples),
        loss=fedcore.federated_mean(metrics.loss, metrics.num_examples),
        accuracy=fedcore.federated_mean(metrics.accuracy, metrics.num_examples))


class MnistModel(fedcore.learning.Model):

    def __init__(self):
        self._variables = create_mnist_variables()

    @property
    def trainable_variables(self):
        return [self._variables.weights, self._variables.bias]

    @property
    def non_trainable_variables(self):
        return []

    @property
    def local_variables(self):
        return [
            self._variables.num_examples, self._variables.loss_sum,
            self._variables.accuracy_sum
        ]

    @property
    def input_spec(self):
        return collections.OrderedDict(
            x=tf.TensorSpec([None, 784], tf.float32),
            y=tf.TensorSpec([None, 1], tf.int32))

    @tf.function
    def forward_pass(self, batch, training=True):
        del training
        loss, predictions = mnist_forward_pass(self._variables, batch)
        num_exmaples = tf.shape(batch['x'])[0]
        return fedcore.learning.BatchOutput(
            loss=loss, predictions=predictions, num_examples=num_exmaples)

    @tf.function
    def report_local_outputs(self):
        return get_local_mnist_metrics(self._variables)

    @property
    def federated_output_computation(self):
        return aggregate_mnist_metrics_across_clients


@pytest.fixture(scope="module")
def evaluation():
    evaluation = fedcore.learning.build_federated_evaluation(MnistModel)
    return evaluation


@pytest.fixture(scope="module")
def custom_iterative_process():
    iterative_process = fedcore.learning.build_federated_averaging_process(
        MnistModel,
        client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.02))
    return iterative_process


def test_evaluation_type_signature(evaluation):
    # TFF: '(<<trainable=<float32[784,10],float32[10]>,non_trainable=<>>@SERVER,'
    #      '{<x=float32[?,784],y=int32[?,1]>*}@CLIENTS> -> '
    #      '<num_examples=float32@SERVER,loss=float32@SERVER,accuracy=float32@SERVER>)'
    assert str(evaluation.type_signature) == (
        '(<<trainable=<weights=float32[784,10],bias=float32[10]>,non_trainable=<>>@SERVER,'
        '{<x=float32[?,784],y=int32[?,1]>*}@CLIENTS> -> '
        '<num_examples=float32@SERVER,loss=float32@SERVER,accuracy=float32@SERVER>)')


def test_training_and_evaluating_a_custom_model(executor, custom_iterative_process, evaluation):
    iterative_process = custom_iterative_process
    state = iterative_process.initialize()

    # The zero model predicts 1/10 for every digit, and argmax picks 0: its loss is ln 10
    # and its accuracy the share of 0s.
    counts = label_counts(emnist_train, sample_clients)
    initial_metrics = evaluation(state.model, federated_train_data)
    assert initial_metrics['num_examples'] == NUM_EPOCHS * counts.sum()
    assert initial_metrics['loss'] == pytest.approx(np.log(10), rel=1e-5)
    assert initial_metrics['accuracy'] == pytest.approx(counts[0] / counts.sum(), rel=1e-5)

    # Every example of every epoch is counted once (the notebook: 4860.0).
    train_examples = NUM_EPOCHS * counts.sum()
    state, metrics = iterative_process.next(state, federated_train_data)
    assert metrics['num_examples'] == train_examples
    for round_num in range(2, ROUNDS + 1):
        state, metrics = iterative_process.next(state, federated_train_data)
        assert metrics['num_examples'] == train_examples
        assert 0 < metrics['loss'] < 100 and 0 <= metrics['accuracy'] <= 1

    train_metrics = evaluation(state.model, federated_train_data)
    assert train_metrics['num_examples'] == train_examples
    # Training changed the model, and evaluating it gives what numpy computes from its
    # weights over every training example.  (A few rounds on shuffled data leave the loss
    # near ln 10, above or below it, so the loss alone does not show that the model changed.)
    weights, bias = state.model.trainable['weights'], state.model.trainable['bias']
    assert np.abs(weights).max() > 1e-3
    expected_loss, expected_accuracy = numpy_metrics(weights, bias, emnist_train, sample_clients)
    assert train_metrics['loss'] == pytest.approx(expected_loss, rel=1e-4)
    # An argmax tie may fall either way in float32: allow one example.
    assert train_metrics['accuracy'] == pytest.approx(expected_accuracy, abs=1.5 / train_examples)

    assert len(federated_test_data) == NUM_CLIENTS
    test_metrics = evaluation(state.model, federated_test_data)
    assert test_metrics['num_examples'] == NUM_EPOCHS * label_counts(emnist_test, sample_clients).sum()
    assert 0 < test_metrics['loss'] < 100 and 0 <= test_metrics['accuracy'] <= 1

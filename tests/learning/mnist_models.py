"""The seed tutorial's custom models, in TF2 idioms: MnistModel and MnistTrainableModel.

Variables are plain ``tf.Variable`` s, the forward pass and the local metrics
are ``tf.function`` s, and the metrics are aggregated with ``federated_mean``
weighted by ``num_examples`` and ``federated_sum``.
"""

import collections
import tensorflow as tf
import fedcore
from fedcore import learning

MnistVariables = collections.namedtuple("MnistVariables", "weights bias num_examples loss_sum accuracy_sum")

def create_mnist_variables():
    return MnistVariables(
        weights=tf.Variable(lambda: tf.zeros(dtype=tf.float32, shape=(784, 10)), name="weights", trainable=True),
        bias=tf.Variable(lambda: tf.zeros(dtype=tf.float32, shape=(10)), name="bias", trainable=True),
        num_examples=tf.Variable(0.0, name="num_examples", trainable=False),
        loss_sum=tf.Variable(0.0, name="loss_sum", trainable=False),
        accuracy_sum=tf.Variable(0.0, name="accuracy_sum", trainable=False),
    )

def mnist_forward_pass(variables, batch):
    y = tf.nn.softmax(tf.matmul(batch["x"], variables.weights) + variables.bias)
    predictions = tf.cast(tf.argmax(y, 1), tf.int32)
    flat_labels = tf.reshape(batch["y"], [-1])
    loss = -tf.reduce_mean(tf.reduce_sum(tf.one_hot(flat_labels, 10) * tf.math.log(y), axis=[1]))
    accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, flat_labels), tf.float32))
    num_examples = tf.cast(tf.size(batch["y"]), tf.float32)
    variables.num_examples.assign_add(num_examples)
    variables.loss_sum.assign_add(loss * num_examples)
    variables.accuracy_sum.assign_add(accuracy * num_examples)
    return loss, predictions, num_examples

def get_local_mnist_metrics(variables):
    return collections.OrderedDict(
        accuracy=variables.accuracy_sum / variables.num_examples,
        loss=variables.loss_sum / variables.num_examples,
        num_examples=variables.num_examples,
    )

@fedcore.federated_computation
def aggregate_mnist_metrics_across_clients(metrics):
    return collections.OrderedDict(
        accuracy=fedcore.federated_mean(metrics.accuracy, metrics.num_examples),
        loss=fedcore.federated_mean(metrics.loss, metrics.num_examples),
        num_examples=fedcore.federated_sum(metrics.num_examples),
    )

class MnistModel(learning.Model):
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
        return [self._variables.num_examples, self._variables.loss_sum, self._variables.accuracy_sum]
    @property
    def input_spec(self):
        return collections.OrderedDict(x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None], tf.int32))
    @tf.function
    def forward_pass(self, batch, training=True):
        del training
        loss, predictions, num_examples = mnist_forward_pass(self._variables, batch)
        return learning.BatchOutput(loss=loss, predictions=predictions, num_examples=num_examples)
    @tf.function
    def report_local_outputs(self):
        return get_local_mnist_metrics(self._variables)
    @property
    def federated_output_computation(self):
        return aggregate_mnist_metrics_across_clients

class MnistTrainableModel(MnistModel, learning.TrainableModel):
    @tf.function
    def train_on_batch(self, batch):
        with tf.GradientTape() as tape:
            output = self.forward_pass(batch)
        grads = tape.gradient(output.loss, self.trainable_variables)
        for v, g in zip(self.trainable_variables, grads):
            v.assign_sub(0.02 * g)
        return output

"""Cases: TF computations that create tf.Variables, Keras models and Keras optimizers.

Variables a TF computation creates are its own: every call creates and
initialises them anew, so the computation stays a function of its arguments.
The expected values are computed here in numpy.
"""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case, lazy
from fedcore.testing.conformance.cases.common import OD, _clients, _server

_LR = 0.1
_X = [np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]], np.float32), np.array([[-1.0, 1.0], [3.0, 1.0]], np.float32)]
_Y = [np.array([[1.0], [0.0], [2.0]], np.float32), np.array([[-1.0], [4.0]], np.float32)]
_BATCH = 2
_W0 = [np.array([[0.5], [-0.25]], np.float32), np.array([0.125], np.float32)]


def _count_from():
    @fedcore.tf_computation(tf.float32)
    def count_from(x):
        counter = tf.Variable(x)  # initialised from the parameter, in every call
        counter.assign_add(1.0)
        counter.assign(counter * 2.0)
        return counter.read_value()

    @fedcore.federated_computation(_clients(tf.float32))
    def count_each(xs):
        return fedcore.federated_map(count_from, xs)

    return count_each


add_case("variables_from_a_parameter_in_client_work", _count_from, [1.0, -2.0, 0.5],
         expected=[4.0, -2.0, 3.0], tags={"variables"})


def _model_fn():
    return tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1, kernel_initializer="zeros")])


_ELEMENT = OD(x=fedcore.TensorType(tf.float32, [None, 2]), y=fedcore.TensorType(tf.float32, [None, 1]))
_WEIGHTS = fedcore.to_type([fedcore.TensorType(tf.float32, [2, 1]), fedcore.TensorType(tf.float32, [1])])


def _keras_round():
    @fedcore.tf_computation(fedcore.SequenceType(_ELEMENT), _WEIGHTS)
    def client_update(dataset, server_weights):
        # TFF's pattern: a fresh model and optimizer, the server's weights assigned in, a GradientTape loop.
        model = _model_fn()
        optimizer = tf.keras.optimizers.SGD(_LR)
        weights = model.trainable_variables
        for v, w in zip(weights, server_weights):
            v.assign(w)
        loss_sum = tf.constant(0.0)
        for batch in dataset:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))
            optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
            loss_sum += loss
        return OD(weights=[tf.identity(v) for v in weights], loss=loss_sum)

    @fedcore.federated_computation(_server(_WEIGHTS), _clients(fedcore.SequenceType(_ELEMENT)))
    def keras_round(weights, data):
        out = fedcore.federated_map(client_update, fedcore.federated_zip((data, fedcore.federated_broadcast(weights))))
        return fedcore.federated_mean(out.weights), fedcore.federated_mean(out.loss)

    return keras_round


def _client_dataset(i):
    def make():
        return tf.data.Dataset.from_tensor_slices(OD(x=_X[i], y=_Y[i])).batch(_BATCH)

    make.__name__ = f"client_dataset{i}"
    return lazy(make)


def _sgd_by_hand():
    """Plain gradient descent on mean squared error, batch by batch, as the client update does it."""
    new_weights, losses = [], []
    for x, y in zip(_X, _Y):
        kernel, bias = _W0[0].astype(np.float64), _W0[1].astype(np.float64)
        total = 0.0
        for s in range(0, len(x), _BATCH):
            bx, by = x[s:s + _BATCH].astype(np.float64), y[s:s + _BATCH].astype(np.float64)
            err = bx @ kernel + bias - by
            total += float(np.mean(err ** 2))
            kernel = kernel - _LR * (2.0 / len(bx)) * bx.T @ err
            bias = bias - _LR * (2.0 / len(bx)) * err.sum(axis=0)
        new_weights.append([kernel, bias])
        losses.append(total)
    mean = [np.mean([w[k] for w in new_weights], axis=0).astype(np.float32) for k in range(2)]
    return mean, np.float32(np.mean(losses))


add_case("round_keras_model_and_optimizer_in_client_work", _keras_round, _W0,
         [_client_dataset(0), _client_dataset(1)], expected=_sgd_by_hand(),
         tags={"rounds", "variables", "datasets"})

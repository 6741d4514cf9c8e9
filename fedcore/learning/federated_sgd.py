"""Federated SGD: one gradient step per round from all clients' data.

Every client computes the mean gradient of the loss over its dataset at the
broadcast weights, without changing them; the server averages the gradients,
weighted by examples, and applies them with its optimizer.  With SGD on the
server this is large-batch gradient descent over the union of the clients'
data in the round.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import tensorflow as tf

from fedcore.compiler.computation import federated_computation, tf_computation
from fedcore.compiler.federated_api import sequence_reduce
from fedcore.learning import _nest
from fedcore.learning import optimizers as optimizers_lib
from fedcore.learning import training
from fedcore.learning.iterative_process import IterativeProcess
from fedcore.learning.model_functions import ModelFunctions, field

__all__ = ["build_federated_sgd_process"]


def _default_server_optimizer():
    return optimizers_lib.SGD(learning_rate=0.1)


def build_client_gradient(fns: ModelFunctions):
    weights_type = fns.weights_type

    @tf_computation(weights_type)
    def start(weights):
        return collections.OrderedDict(
            weights=weights,
            local=fns.local_constant(),
            gradient_sum=_nest.map_structure(tf.zeros_like, field(weights, "trainable")),
            num_examples=tf.constant(0.0),
        )

    acc_type = start.type_signature.result

    @tf_computation(acc_type, fns.input_type)
    def add_batch(state, batch):
        weights = field(state, "weights")
        output, gradients, new_weights, local = fns.gradients(weights, field(state, "local"), batch)
        n = output.num_examples
        return collections.OrderedDict(
            # The trainable weights stay as broadcast; the non-trainable ones may move (batch statistics).
            weights=type(new_weights)(field(weights, "trainable"), field(new_weights, "non_trainable")),
            local=local,
            gradient_sum=_nest.map_structure(lambda s, g: s + g * n, field(state, "gradient_sum"), gradients),
            num_examples=field(state, "num_examples") + n,
        )

    @tf_computation(acc_type)
    def finish(state):
        n = field(state, "num_examples")
        gradient = _nest.map_structure(lambda s: tf.math.divide_no_nan(s, n), field(state, "gradient_sum"))
        update = collections.OrderedDict(gradient=gradient, non_trainable=training.floating(field(field(state, "weights"), "non_trainable")))
        return training.client_result(update, n, fns.report(field(state, "local")))

    @federated_computation(weights_type, training.data_type(fns))
    def client_gradient(weights, data):
        return finish(sequence_reduce(data, start(weights), add_batch))

    return client_gradient


def build_federated_sgd_process(
    model_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] = _default_server_optimizer,
) -> IterativeProcess:
    """Federated SGD as an IterativeProcess; the server uses SGD with rate 0.1 by default.

    Same state and ``next`` as ``build_federated_averaging_process``.
    """
    fns = training.model_functions(model_fn)
    server_optimizer = optimizers_lib.build(server_optimizer_fn, "server_optimizer_fn")
    return training.build_process(fns, server_optimizer, build_client_gradient(fns), lambda gradient: gradient)

"""Federated averaging (McMahan et al., 2017), with a server optimizer
(Reddi et al., "Adaptive Federated Optimization", 2021).

Each round, the server broadcasts the model; every client trains it on its
own data with its optimizer, one step per batch, and sends back how much the
trainable weights moved (the delta), with its number of examples as weight.
The server averages the deltas and applies the negated average as a gradient
with its optimizer: SGD with learning rate 1.0 adds the mean delta (plain
FedAvg); momentum, Adam or Yogi give FedAvgM, FedAdam and FedYogi.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import tensorflow as tf

from fedcore.compiler.computation import federated_computation, tf_computation
from fedcore.compiler.federated_api import sequence_reduce
from fedcore.learning import _nest
from fedcore.learning import aggregators
from fedcore.learning import optimizers as optimizers_lib
from fedcore.learning import training
from fedcore.learning.iterative_process import IterativeProcess
from fedcore.learning.model import ModelWeights
from fedcore.learning.model_functions import ModelFunctions, field

__all__ = ["build_federated_averaging_process"]


def _default_server_optimizer():
    return optimizers_lib.SGD(learning_rate=1.0)


def client_training_mode(fns: ModelFunctions, client_optimizer_fn: Optional[Callable[[], Any]]):
    """The client's optimizer, or None to use the model's own ``train_on_batch``."""
    if client_optimizer_fn is not None:
        return optimizers_lib.build(client_optimizer_fn, "client_optimizer_fn")
    if fns.default_optimizer is not None:
        return fns.default_optimizer
    error = getattr(fns, "default_optimizer_error", None)
    if error:
        raise ValueError(f"cannot train clients with the compiled optimizer: {error}; pass client_optimizer_fn")
    if fns.has_train_on_batch:
        return None
    return optimizers_lib.SGD(learning_rate=0.1)


def build_client_update(fns: ModelFunctions, client_optimizer: Optional[optimizers_lib.Optimizer]):
    """The federated computation ``(weights, data) -> <update, weight, model_output>`` of one client."""
    weights_type = fns.weights_type
    batch_type = fns.input_type

    @tf_computation(weights_type)
    def start_training(weights):
        state = collections.OrderedDict(weights=weights, local=fns.local_constant())
        if client_optimizer is not None:
            state["optimizer_state"] = client_optimizer.initialize(field(weights, "trainable"))
        state["num_examples"] = tf.constant(0.0)
        return state

    acc_type = start_training.type_signature.result

    @tf_computation(acc_type, batch_type)
    def train_on_batch(state, batch):
        weights, local = field(state, "weights"), field(state, "local")
        new = collections.OrderedDict()
        if client_optimizer is None:
            output, weights, local = fns.train_on_batch(weights, local, batch)
        else:
            output, gradients, weights, local = fns.gradients(weights, local, batch)
            optimizer_state, trainable = client_optimizer.apply(
                field(state, "optimizer_state"), field(weights, "trainable"), gradients
            )
            weights = ModelWeights(trainable, field(weights, "non_trainable"))
        new["weights"] = weights
        new["local"] = local
        if client_optimizer is not None:
            new["optimizer_state"] = tuple(optimizer_state)
        new["num_examples"] = field(state, "num_examples") + output.num_examples
        return new

    @tf_computation(weights_type, acc_type)
    def finish_training(initial, state):
        final = field(state, "weights")
        delta = _nest.map_structure(lambda a, b: a - b, field(final, "trainable"), field(initial, "trainable"))
        update = collections.OrderedDict(trainable_delta=delta, non_trainable=training.floating(field(final, "non_trainable")))
        return training.client_result(update, field(state, "num_examples"), fns.report(field(state, "local")))

    @federated_computation(weights_type, training.data_type(fns))
    def client_update(weights, data):
        return finish_training(weights, sequence_reduce(data, start_training(weights), train_on_batch))

    return client_update


def build_federated_averaging_process(
    model_fn: Callable[[], Any],
    client_optimizer_fn: Optional[Callable[[], Any]] = None,
    server_optimizer_fn: Callable[[], Any] = _default_server_optimizer,
    report_nonfinite: bool = False,
    secure: bool = False,
    aggregator: Optional[aggregators.Aggregator] = None,
) -> IterativeProcess:
    """Federated averaging as an IterativeProcess.

    ``model_fn`` returns a ``fedcore.learning.Model`` (a new one each call).
    ``client_optimizer_fn`` and ``server_optimizer_fn`` return optimizers from
    ``fedcore.learning.optimizers`` or Keras SGD, Adam or Adagrad.  The clients
    use, in this order: ``client_optimizer_fn``; a compiled Keras model's
    optimizer; a TrainableModel's ``train_on_batch``; SGD with rate 0.1.  The
    server uses SGD with rate 1.0 unless told otherwise.

    ``initialize()`` returns the ``ServerState`` (model weights and server
    optimizer state); ``next(state, federated_data)`` trains one round on a
    list of client datasets and returns the new state and the model's
    metrics, aggregated over the clients' training.

    A client whose update holds a NaN or an infinity is left out of the
    average (weight 0), and a round in which no client's update is usable
    leaves the state as it was, so the server model stays finite.  With
    ``report_nonfinite=True`` the metrics gain ``num_nonfinite_updates``,
    the number of clients so left out.

    ``aggregator`` (``fedcore.learning.SecureAggregator``, ``DPAggregator``, ...)
    replaces the weighted mean of the clients' updates; ``secure=True`` sums
    them with ``federated_secure_sum`` (pairwise masking), with
    ``SecureAggregator()``'s defaults unless ``aggregator`` is a secure one.
    See docs/reliability.md.
    """
    aggregator = aggregators.resolve(aggregator, secure)
    fns = training.model_functions(model_fn)
    client_optimizer = client_training_mode(fns, client_optimizer_fn)
    server_optimizer = optimizers_lib.build(server_optimizer_fn, "server_optimizer_fn")
    client_update = build_client_update(fns, client_optimizer)
    negate = lambda delta: _nest.map_structure(lambda d: -d, delta)  # noqa: E731
    return training.build_process(
        fns, server_optimizer, client_update, negate, report_nonfinite=report_nonfinite, aggregator=aggregator
    )

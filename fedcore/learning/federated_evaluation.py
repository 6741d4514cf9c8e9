"""Federated evaluation: the model's metrics over the clients' data.

The server broadcasts the weights, every client runs the model in inference
mode over its dataset, and the model's ``federated_output_computation``
aggregates the clients' local outputs.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from fedcore.compiler.computation import (
    Computation, federated_computation, masked_element_type, tf_computation, with_masked_form)
from fedcore.compiler.federated_api import federated_broadcast, federated_map, federated_zip, sequence_reduce
from fedcore.learning import training
from fedcore.learning.model_functions import field
from fedcore.types import CLIENTS, SERVER, FederatedType

__all__ = ["build_federated_evaluation"]


def build_federated_evaluation(model_fn: Callable[[], Any]) -> Computation:
    """A federated computation ``(<weights@SERVER, {batches*}@CLIENTS> -> metrics)``.

    The weights are ``ModelWeights`` (``state.model`` of a training process);
    the result is what the model's ``federated_output_computation`` returns.
    """
    fns = training.model_functions(model_fn)
    weights_type = fns.weights_type

    @tf_computation(weights_type)
    def start_evaluation(weights):
        return collections.OrderedDict(weights=weights, local=fns.local_constant())

    acc_type = start_evaluation.type_signature.result

    @tf_computation(acc_type, fns.input_type)
    def evaluate_batch(state, batch):
        weights = field(state, "weights")
        _, _, local = fns.forward(weights, field(state, "local"), batch, training=False)
        return collections.OrderedDict(weights=weights, local=local)

    if fns.why_not_masked() is None:
        # Partial batches padded to the full batch size then run together (docs/performance.md).
        @tf_computation(acc_type, masked_element_type(fns.input_type))
        def evaluate_padded_batch(state, padded):
            weights = field(state, "weights")
            local = fns.masked_evaluation(weights, field(state, "local"), padded[0], padded[1])
            return collections.OrderedDict(weights=weights, local=local)

        with_masked_form(evaluate_batch, evaluate_padded_batch)

    @tf_computation(acc_type)
    def finish_evaluation(state):
        return fns.report(field(state, "local"))

    @federated_computation(weights_type, training.data_type(fns))
    def client_evaluation(weights, data):
        return finish_evaluation(sequence_reduce(data, start_evaluation(weights), evaluate_batch))

    @federated_computation(FederatedType(weights_type, SERVER), FederatedType(training.data_type(fns), CLIENTS))
    def federated_evaluation(*args):
        weights, federated_data = args
        outputs = federated_map(client_evaluation, federated_zip([federated_broadcast(weights), federated_data]))
        return fns.federated_output_computation(outputs)

    return federated_evaluation

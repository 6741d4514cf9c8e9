"""What federated averaging and federated SGD share: the server side.

Each round, every client turns the broadcast weights and its data into an
*update*, a struct whose first element (``trainable_delta`` for FedAvg,
``gradient`` for FedSGD) is shaped like the trainable weights and whose
second is the client's floating-point ``non_trainable`` weights (batch
statistics, say), plus a weight (its number of examples) and its local
outputs.  The server averages the updates, weighted by examples, applies the
first with its optimizer and takes the second as its non-trainable weights.
Integer non-trainable weights (a random generator's state) stay as the
server has them.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import attrs
import tensorflow as tf

from fedcore.compiler.computation import federated_computation, tf_computation
from fedcore.compiler.federated_api import (
    federated_broadcast,
    federated_eval,
    federated_map,
    federated_mean,
    federated_sum,
    federated_zip,
)
from fedcore.learning import _nest
from fedcore.learning import optimizers as optimizers_lib
from fedcore.learning.iterative_process import IterativeProcess
from fedcore.learning.model import ModelWeights, check_model
from fedcore.learning.model_functions import ModelFunctions, field, functions_for
from fedcore.structure import python_items
from fedcore.types import CLIENTS, SERVER, FederatedType, SequenceType, StructType

__all__ = ["ServerState"]


@attrs.frozen
class ServerState:
    """The state of a training process: the model's weights and the server optimizer's state."""

    model: ModelWeights
    optimizer_state: Any


def model_functions(model_fn: Callable[[], Any]) -> ModelFunctions:
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a function returning a fedcore.learning.Model, got {model_fn!r}")
    return functions_for(check_model(model_fn(), "model_fn"))


def all_finite(structure: Any) -> tf.Tensor:
    leaves = [tf.convert_to_tensor(x) for x in _nest.flatten(structure)]
    checks = [tf.reduce_all(tf.math.is_finite(x)) for x in leaves if x.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def pick(keep: tf.Tensor, a: Any, b: Any) -> tf.Tensor:
    """``a`` if the scalar ``keep`` holds, else ``b`` (tensors of one shape and dtype).

    TensorFlow's ``Select`` passes the chosen tensor on as it is; the
    broadcasting form that ``tf.where`` builds copies it, element by element
    (about 1 ms per million float32 elements on one core, per client).
    """
    return tf.raw_ops.Select(condition=keep, x=a, y=b)


def zero_unless(keep: tf.Tensor, structure: Any) -> Any:
    return _nest.map_structure(lambda x: pick(keep, x, tf.zeros_like(x)), structure)


def choose(keep: tf.Tensor, new: Any, old: Any) -> Any:
    return _nest.map_structure(lambda n, o: pick(keep, n, tf.cast(o, n.dtype)), new, old)


def floating(named: Any) -> "collections.OrderedDict":
    """The floating-point entries of a struct of named tensors (what can be averaged)."""
    return collections.OrderedDict(
        (n, v) for n, v in python_items(named) if tf.convert_to_tensor(v).dtype.is_floating
    )


def merge_named(old: Any, new: Any) -> "collections.OrderedDict":
    """``old`` with the entries that ``new`` has replaced by ``new``'s."""
    replaced = dict(python_items(new))
    return collections.OrderedDict((n, replaced.get(n, v)) for n, v in python_items(old))


def client_result(update: Any, num_examples: tf.Tensor, model_output: Any) -> "collections.OrderedDict":
    """A client's output; a client whose update is not finite (it diverged) gets weight 0 and a zero update.

    ``nonfinite`` is 1 for such a client, 0 otherwise: summed over the
    clients it is the ``num_nonfinite_updates`` metric.
    """
    finite = all_finite(update)
    return collections.OrderedDict(
        update=zero_unless(finite, update),
        weight=tf.where(finite, tf.cast(num_examples, tf.float32), 0.0),
        model_output=model_output,
        nonfinite=tf.cast(tf.logical_not(finite), tf.int32),
    )


def with_nonfinite_count(metrics: Any, count: Any) -> "collections.OrderedDict":
    """The model's metrics (traced) with ``num_nonfinite_updates`` added as a last entry."""
    t = metrics.type_signature
    struct = t.member if isinstance(t, FederatedType) else t
    if isinstance(struct, StructType) and all(name is not None for name in struct.names()):
        out = collections.OrderedDict((name, metrics[name]) for name in struct.names())
    else:
        out = collections.OrderedDict(model=metrics)
    out["num_nonfinite_updates"] = count
    return out


def build_process(
    fns: ModelFunctions,
    server_optimizer: optimizers_lib.Optimizer,
    client_update: Any,
    server_gradient: Callable[[Any], Any],
    report_nonfinite: bool = False,
    aggregator: Any = None,
) -> IterativeProcess:
    """The initialize/next pair around a federated ``client_update(weights, data)``.

    ``server_gradient(update)`` turns the averaged update's first element into
    the gradient that the server optimizer applies.  With ``report_nonfinite``
    the metrics gain ``num_nonfinite_updates``: how many clients' updates held
    a NaN or an infinity and were left out of the average.  ``aggregator``
    (see ``fedcore.learning.aggregators``) replaces the weighted mean of the
    updates.
    """

    @tf_computation
    def server_init():
        weights = fns.weights_constant()
        return ServerState(model=weights, optimizer_state=server_optimizer.initialize(weights.trainable))

    state_type = server_init.type_signature.result
    update_type = client_update.type_signature.result["update"]

    @tf_computation(state_type, update_type)
    def server_update(state, update):
        model = field(state, "model")
        trainable = field(model, "trainable")
        (_, first), (_, mean_non_trainable) = python_items(update)[:2]
        gradient = server_gradient(first)
        # Integer non-trainable weights (a random seed's state) are not averaged: the server's stay.
        non_trainable = merge_named(field(model, "non_trainable"), mean_non_trainable)
        optimizer_state, new_trainable = server_optimizer.apply(field(state, "optimizer_state"), trainable, gradient)
        new = ServerState(
            model=ModelWeights(new_trainable, non_trainable),
            optimizer_state=tuple(optimizer_state),
        )
        # With no examples at all (or only diverged clients) the mean update is NaN: keep the state.
        # A finite update that still overflows the server's weights is refused the same way.
        old = ServerState(model=ModelWeights(trainable, field(model, "non_trainable")), optimizer_state=field(state, "optimizer_state"))
        return choose(tf.logical_and(all_finite(update), all_finite(new.model)), new, old)

    @federated_computation
    def initialize():
        return federated_eval(server_init, SERVER)

    data_type = client_update.type_signature.parameter[1]

    @federated_computation(FederatedType(state_type, SERVER), FederatedType(data_type, CLIENTS))
    def next_round(*args):
        state, federated_data = args
        outputs = federated_map(client_update, federated_zip([federated_broadcast(state.model), federated_data]))
        if aggregator is None:
            mean_update = federated_mean(outputs.update, weight=outputs.weight)
        else:  # a fedcore.learning.aggregators.Aggregator; the round number is the server optimizer's step count
            mean_update = aggregator.aggregate(outputs.update, outputs.weight, state.optimizer_state[0])
        new_state = federated_map(server_update, federated_zip([state, mean_update]))
        metrics = fns.federated_output_computation(outputs.model_output)
        if report_nonfinite:
            metrics = with_nonfinite_count(metrics, federated_sum(outputs.nonfinite))
        return new_state, metrics

    return IterativeProcess(initialize, next_round)


def data_type(fns: ModelFunctions) -> SequenceType:
    return SequenceType(fns.input_type)

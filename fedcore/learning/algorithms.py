"""TFF's ``tff.learning.algorithms`` builders over fedcore's own algorithms.

* :func:`build_weighted_fed_avg` and :func:`build_unweighted_fed_avg` are
  ``fedcore.learning.build_federated_averaging_process``;
* :func:`build_fed_eval` is ``fedcore.learning.build_federated_evaluation``.

Each returns a ``fedcore.learning.templates.LearningProcess``: ``next``
returns a ``LearningProcessOutput`` whose ``metrics`` are nested as TFF's:
``client_work.train`` (or ``client_work.eval.current_round_metrics``) holds
the model's metrics, exactly those fedcore's own process reports, and
``finalizer.update_non_finite`` is 1 in a round whose aggregated update was
not finite (so the server kept its model), else 0.
"""

from __future__ import annotations

import collections
import enum
from typing import Any, Callable, Optional

import tensorflow as tf

from fedcore.compiler.computation import federated_computation, tf_computation
from fedcore.compiler.federated_api import federated_eval, federated_map, federated_zip
from fedcore.learning import aggregator_factories
from fedcore.learning import optimizers as optimizers_lib
from fedcore.learning import training
from fedcore.learning.federated_averaging import build_federated_averaging_process
from fedcore.learning.federated_evaluation import build_federated_evaluation
from fedcore.learning.model import ModelWeights
from fedcore.learning.model_functions import field
from fedcore.learning.templates import LearningProcess, LearningProcessOutput
from fedcore.types import CLIENTS, SERVER, FederatedType

__all__ = ["ClientWeighting", "build_fed_eval", "build_unweighted_fed_avg", "build_weighted_fed_avg"]


class ClientWeighting(enum.Enum):
    """TFF's ``tff.learning.ClientWeighting``: how clients' updates are weighted in the mean."""

    NUM_EXAMPLES = "num_examples"  # by each client's number of examples (FedAvg)
    UNIFORM = "uniform"  # every client that trained counts once


def _check_unsupported(**options: Any) -> None:
    for name, value in options.items():
        if value is not None:
            raise ValueError(
                f"{name} is not supported by fedcore's federated averaging (got {value!r}); leave it None: "
                "see docs/tff_migration.md"
            )


def _server_state_accessors(state_member):
    @tf_computation(state_member)
    def get_model_weights(state):
        return field(state, "model")

    @tf_computation(state_member, state_member["model"])
    def set_model_weights(state, weights):
        return training.ServerState(
            model=ModelWeights(field(weights, "trainable"), field(weights, "non_trainable")),
            optimizer_state=tuple(field(state, "optimizer_state")),
        )

    return get_model_weights, set_model_weights


def _training_metrics(old_state, new_state, metrics):
    """TFF's nesting of the metrics; ``update_non_finite`` is 1 when the server optimizer took no step."""

    @tf_computation(
        old_state.type_signature.member["optimizer_state"][0],
        new_state.type_signature.member["optimizer_state"][0],
        metrics.type_signature.member,
    )
    def nest(old_step, new_step, model_metrics):
        return collections.OrderedDict(
            distributor=(),
            client_work=collections.OrderedDict(train=model_metrics),
            aggregator=(),
            finalizer=collections.OrderedDict(update_non_finite=tf.cast(tf.equal(old_step, new_step), tf.int32)),
        )

    steps = federated_zip([old_state.optimizer_state[0], new_state.optimizer_state[0], metrics])
    return federated_map(nest, steps)


def _build_fed_avg(model_fn, client_optimizer_fn, server_optimizer_fn, weighting, model_aggregator) -> LearningProcess:
    if client_optimizer_fn is None:
        raise TypeError("client_optimizer_fn is required: an optimizer such as fedcore.learning.optimizers.build_sgdm(0.02)")
    if not isinstance(weighting, ClientWeighting):
        raise TypeError(
            f"client_weighting must be ClientWeighting.NUM_EXAMPLES or ClientWeighting.UNIFORM, got {weighting!r} "
            "(a weighting function of the model's outputs is not supported)"
        )
    aggregator = aggregator_factories.resolve(model_aggregator)
    if weighting is ClientWeighting.UNIFORM:
        aggregator = aggregator_factories.UniformWeighting(aggregator)
    if server_optimizer_fn is None:
        server_optimizer_fn = optimizers_lib.build_sgdm(learning_rate=1.0)
    process = build_federated_averaging_process(
        model_fn,
        client_optimizer_fn=client_optimizer_fn,
        server_optimizer_fn=server_optimizer_fn,
        aggregator=aggregator,
    )
    get_weights, set_weights = _server_state_accessors(process.state_type.member)
    return LearningProcess.from_iterative_process(process, get_weights, set_weights, metrics_fn=_training_metrics)


def build_weighted_fed_avg(
    model_fn: Callable[[], Any],
    client_optimizer_fn: Any,
    server_optimizer_fn: Any = None,
    *,
    client_weighting: ClientWeighting = ClientWeighting.NUM_EXAMPLES,
    model_distributor: Any = None,
    model_aggregator: Any = None,
    metrics_aggregator: Any = None,
    loop_implementation: Any = None,
) -> LearningProcess:
    """Federated averaging as a LearningProcess, with TFF's arguments.

    ``model_fn`` returns a ``fedcore.learning.Model`` (``fedcore.learning.models.from_keras_model``).
    The optimizers are ``fedcore.learning.optimizers`` ones (``build_sgdm``,
    ``build_adam``, ...), functions returning one, or functions returning a
    Keras SGD, Adam or Adagrad; the server's defaults to ``build_sgdm(1.0)``.
    ``model_aggregator`` is a ``fedcore.aggregators`` factory or a
    ``fedcore.learning.Aggregator`` (None: the mean weighted as
    ``client_weighting`` says).  ``model_distributor``, ``metrics_aggregator``
    and ``loop_implementation`` must be left None.

    The state is fedcore's ``ServerState`` (``state.model`` holds the
    weights); ``next(state, client_data)`` returns a ``LearningProcessOutput``.
    """
    _check_unsupported(
        model_distributor=model_distributor, metrics_aggregator=metrics_aggregator, loop_implementation=loop_implementation
    )
    return _build_fed_avg(model_fn, client_optimizer_fn, server_optimizer_fn, client_weighting, model_aggregator)


def build_unweighted_fed_avg(
    model_fn: Callable[[], Any],
    client_optimizer_fn: Any,
    server_optimizer_fn: Any = None,
    model_distributor: Any = None,
    model_aggregator: Any = None,
    metrics_aggregator: Any = None,
    loop_implementation: Any = None,
) -> LearningProcess:
    """:func:`build_weighted_fed_avg` with every client that trained weighted equally."""
    _check_unsupported(
        model_distributor=model_distributor, metrics_aggregator=metrics_aggregator, loop_implementation=loop_implementation
    )
    return _build_fed_avg(model_fn, client_optimizer_fn, server_optimizer_fn, ClientWeighting.UNIFORM, model_aggregator)


def build_fed_eval(
    model_fn: Callable[[], Any],
    model_distributor: Any = None,
    metrics_aggregation_process: Any = None,
    loop_implementation: Any = None,
) -> LearningProcess:
    """Federated evaluation as a LearningProcess, over ``fedcore.learning.build_federated_evaluation``.

    The state is the model's weights (``ModelWeights``, the model's initial
    weights after ``initialize()``); give it a trained model's with
    ``set_model_weights(state, training_process.get_model_weights(train_state))``.
    ``next(state, client_data)`` evaluates them and returns the state
    unchanged, with the model's metrics in
    ``metrics['client_work']['eval']['current_round_metrics']``.
    """
    _check_unsupported(
        model_distributor=model_distributor,
        metrics_aggregation_process=metrics_aggregation_process,
        loop_implementation=loop_implementation,
    )
    fns = training.model_functions(model_fn)
    evaluation = build_federated_evaluation(model_fn)
    weights_type = evaluation.type_signature.parameter[0].member
    data_type = evaluation.type_signature.parameter[1].member

    @tf_computation
    def initial_weights():
        return fns.weights_constant()

    @federated_computation
    def initialize():
        return federated_eval(initial_weights, SERVER)

    @tf_computation(evaluation.type_signature.result.member)
    def nest(model_metrics):
        return collections.OrderedDict(
            distributor=(),
            client_work=collections.OrderedDict(eval=collections.OrderedDict(current_round_metrics=model_metrics)),
            aggregator=(),
            finalizer=(),
        )

    @federated_computation(FederatedType(weights_type, SERVER), FederatedType(data_type, CLIENTS))
    def next_fn(state, client_data):
        return LearningProcessOutput(state=state, metrics=federated_map(nest, evaluation(state, client_data)))

    @tf_computation(weights_type)
    def get_model_weights(state):
        return state

    @tf_computation(weights_type, weights_type)
    def set_model_weights(state, weights):
        return ModelWeights(field(weights, "trainable"), field(weights, "non_trainable"))

    return LearningProcess(initialize, next_fn, get_model_weights, set_model_weights)

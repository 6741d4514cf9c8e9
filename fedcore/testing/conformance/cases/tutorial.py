"""Cases: the seed tutorial, aggregating client metrics."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, _clients


def _metrics():
    metrics_type = OD(num_examples=tf.int32, loss=tf.float32, accuracy=tf.float32)

    @fedcore.federated_computation(_clients(metrics_type))
    def aggregate_metrics(m):
        return OD(
            num_examples=fedcore.federated_sum(m.num_examples),
            loss=fedcore.federated_mean(m.loss, m.num_examples),
            accuracy=fedcore.federated_mean(m.accuracy, m.num_examples),
        )

    return aggregate_metrics


add_case(
    "tutorial_metrics_aggregation",
    _metrics,
    [OD(num_examples=2, loss=1.0, accuracy=0.5), OD(num_examples=6, loss=2.0, accuracy=0.75)],
    expected=OD(num_examples=8, loss=1.75, accuracy=0.6875),
    tags={"tutorial", "containers"},
)
add_case(
    "zero_clients_tutorial_metrics",
    _metrics,
    [],
    expected=OD(num_examples=0, loss=float("nan"), accuracy=float("nan")),
    tags={"tutorial", "zero_clients"},
)

"""Cases: rounds, computations shaped (<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>).

The shape that deployment forms (fedcore.compiler.forms) and distributed runtimes cut into pieces.
"""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, _FLOATS, _clients, _float_dataset, _server


def _round_count_and_mean():
    @fedcore.tf_computation(tf.int32)
    def increment(n):
        return n + 1

    @fedcore.federated_computation(_server(tf.int32), _clients(tf.float32))
    def count_and_mean(rounds, data):
        return fedcore.federated_map(increment, rounds), fedcore.federated_mean(data)

    return count_and_mean


add_case("round_count_and_mean", _round_count_and_mean, 4, [1.0, 2.0, 6.0], expected=(5, 3.0), tags={"rounds"})
add_case(
    "round_zero_clients_mean_is_nan",
    _round_count_and_mean,
    0,
    [],
    expected=(1, float("nan")),
    tags={"rounds", "zero_clients"},
)


def _round_broadcast_scale_sum():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def scale(x, factor):
        return x * factor

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32))
    def broadcast_scale_sum(factor, data):
        scaled = fedcore.federated_map(scale, fedcore.federated_zip((data, fedcore.federated_broadcast(factor))))
        return factor, fedcore.federated_sum(scaled)

    return broadcast_scale_sum


add_case("round_broadcast_map_sum", _round_broadcast_scale_sum, 2.0, [1.0, 2.0, 3.5], expected=(2.0, 13.0), tags={"rounds"})


def _round_dataset_weighted_mean():
    @fedcore.tf_computation(_FLOATS, tf.float32)
    def local_stats(ds, offset):
        total, count = ds.reduce((0.0, 0.0), lambda acc, x: (acc[0] + x - offset, acc[1] + 1.0))
        return OD(mean=total / tf.maximum(count, 1.0), count=count)

    @fedcore.tf_computation(tf.float32, tf.float32)
    def step(offset, delta):
        return offset + 0.5 * delta

    @fedcore.federated_computation(_server(tf.float32), _clients(_FLOATS))
    def dataset_weighted_mean(offset, data):
        stats = fedcore.federated_map(local_stats, fedcore.federated_zip((data, fedcore.federated_broadcast(offset))))
        delta = fedcore.federated_mean(stats.mean, weight=stats.count)
        return fedcore.federated_map(step, fedcore.federated_zip((offset, delta))), delta

    return dataset_weighted_mean


add_case(
    "round_datasets_weighted_mean",
    _round_dataset_weighted_mean,
    1.0,
    [_float_dataset(1.0, 2.0, 3.0), _float_dataset(5.0)],
    expected=(1.0 + 0.5 * 1.75, 1.75),
    tags={"rounds", "datasets"},
)


def _round_min_max():
    @fedcore.federated_computation(_server(OD(w=fedcore.TensorType(tf.float32, [2]), step=tf.int32)), _clients(tf.int32))
    def min_max(state, data):
        return state, OD(low=fedcore.federated_min(data), high=fedcore.federated_max(data))

    return min_max


add_case(
    "round_state_struct_min_max",
    _round_min_max,
    OD(w=np.array([1.0, 2.0], np.float32), step=3),
    [4, -2, 9],
    expected=(OD(w=np.array([1.0, 2.0], np.float32), step=3), OD(low=-2, high=9)),
    tags={"rounds", "containers"},
)


def _round_aggregate_secure_sum():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def double(total):
        return total * 2

    @fedcore.tf_computation(tf.int32, tf.int32)
    def combine(n, secure_total):
        return n + secure_total

    @fedcore.federated_computation(_server(tf.int32), _clients(tf.int32))
    def aggregate_and_secure_sum(n, data):
        doubled = fedcore.federated_aggregate(data, 0, add, add, double)
        secure = fedcore.federated_secure_sum(data, 10)
        return fedcore.federated_map(combine, fedcore.federated_zip((n, secure))), doubled

    return aggregate_and_secure_sum


add_case(
    "round_aggregate_and_secure_sum",
    _round_aggregate_secure_sum,
    100,
    [1, 2, 7],
    expected=(110, 20),
    tags={"rounds"},
)


def _round_constant_at_clients():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add(x, y):
        return x + y

    @fedcore.federated_computation(_server(tf.string), _clients(tf.float32))
    def constant_at_clients(label, data):
        shifted = fedcore.federated_map(add, fedcore.federated_zip((data, fedcore.federated_value(10.0, fedcore.CLIENTS))))
        return label, fedcore.federated_zip(OD(total=fedcore.federated_sum(shifted), mean=fedcore.federated_mean(data)))

    return constant_at_clients


add_case(
    "round_constant_at_clients_and_string_state",
    _round_constant_at_clients,
    "run-1",
    [1.0, 3.0],
    expected=("run-1", OD(total=24.0, mean=2.0)),
    tags={"rounds", "strings", "containers"},
)


def _round_two_dependent_rounds():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def distance(x, center):
        return tf.abs(x - center)

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32))
    def two_rounds(state, data):
        center = fedcore.federated_mean(data)
        spread = fedcore.federated_mean(
            fedcore.federated_map(distance, fedcore.federated_zip((data, fedcore.federated_broadcast(center))))
        )
        return state, spread

    return two_rounds


add_case(
    "round_needing_two_dependent_rounds",
    _round_two_dependent_rounds,
    0.0,
    [1.0, 2.0, 6.0],
    expected=(0.0, 2.0),
    tags={"rounds", "two_rounds"},
    doc="Its second aggregation needs the broadcast of the first: it runs, but no deployment form holds it.",
)

"""Cases: aggregations (sum, mean, min, max, aggregate, secure sum)."""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.runtime.executor import ExecutionError
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, _clients


def _sum_int():
    @fedcore.federated_computation(_clients(tf.int32))
    def sum_int(x):
        return fedcore.federated_sum(x)

    return sum_int


add_case("federated_sum", _sum_int, [1, 2, 3], expected=6, tags={"intrinsics"})


def _sum_struct():
    @fedcore.federated_computation(_clients(OD(a=tf.int32, b=(tf.float32, [2]))))
    def sum_struct(x):
        return fedcore.federated_sum(x)

    return sum_struct


add_case(
    "federated_sum_of_structs",
    _sum_struct,
    [OD(a=1, b=[1.0, 2.0]), OD(a=-3, b=[0.5, 4.0])],
    expected=OD(a=-2, b=np.array([1.5, 6.0])),
    tags={"intrinsics", "containers"},
)


def _mean():
    @fedcore.federated_computation(_clients(tf.float32))
    def mean(x):
        return fedcore.federated_mean(x)

    return mean


add_case("federated_mean", _mean, [68.5, 70.3, 69.8], expected=69.53333333, tags={"intrinsics"})


def _mean_vector():
    @fedcore.federated_computation(_clients((tf.float64, [2])))
    def mean_vector(x):
        return fedcore.federated_mean(x)

    return mean_vector


add_case(
    "federated_mean_of_float64_vectors",
    _mean_vector,
    [[1.0, 2.0], [2.0, 5.0]],
    expected=np.array([1.5, 3.5]),
    tags={"intrinsics"},
)


def _weighted_mean():
    @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
    def weighted_mean(values, weights):
        return fedcore.federated_mean(values, weights)

    return weighted_mean


add_case(
    "federated_mean_weighted",
    _weighted_mean,
    [1.0, 2.0, 3.0],
    [1.0, 1.0, 2.0],
    expected=2.25,
    tags={"intrinsics"},
)


def _min_max_float():
    @fedcore.federated_computation(_clients(tf.float32))
    def min_max(x):
        return fedcore.federated_min(x), fedcore.federated_max(x)

    return min_max


add_case("federated_min_and_max", _min_max_float, [3.0, -1.0, 2.0], expected=(-1.0, 3.0), tags={"intrinsics"})


def _min_max_int():
    @fedcore.federated_computation(_clients((tf.int32, [2])))
    def min_max_int(x):
        return OD(min=fedcore.federated_min(x), max=fedcore.federated_max(x))

    return min_max_int


add_case(
    "federated_min_and_max_of_int_vectors",
    _min_max_int,
    [[1, 5], [3, -2]],
    expected=OD(min=np.array([1, -2]), max=np.array([3, 5])),
    tags={"intrinsics"},
)


def _aggregate():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def report(total):
        return tf.cast(total, tf.float32) * 2.0 + 1.0

    @fedcore.federated_computation(_clients(tf.int32))
    def aggregate(x):
        return fedcore.federated_aggregate(x, 0, add, add, report)

    return aggregate


add_case("federated_aggregate", _aggregate, [1, 2, 3], expected=13.0, tags={"intrinsics"})


def _aggregate_struct():
    @fedcore.tf_computation(((tf.int32, tf.int32), tf.int32))
    def accumulate(acc, v):
        return (acc[0] + v, acc[1] + 1)

    @fedcore.tf_computation(((tf.int32, tf.int32), (tf.int32, tf.int32)))
    def merge(a, b):
        return (a[0] + b[0], a[1] + b[1])

    @fedcore.tf_computation((tf.int32, tf.int32))
    def report(acc):
        return OD(mean=tf.cast(acc[0], tf.float32) / tf.cast(tf.maximum(acc[1], 1), tf.float32), count=acc[1])

    @fedcore.federated_computation(_clients(tf.int32))
    def aggregate_mean(x):
        return fedcore.federated_aggregate(x, (0, 0), accumulate, merge, report)

    return aggregate_mean


add_case(
    "federated_aggregate_with_struct_accumulator",
    _aggregate_struct,
    [1, 2, 4],
    expected=OD(mean=7.0 / 3.0, count=3),
    tags={"intrinsics", "containers"},
)


def _secure_sum():
    @fedcore.federated_computation(_clients(tf.int32))
    def secure_sum(x):
        return fedcore.federated_secure_sum(x, 5)

    return secure_sum


add_case("federated_secure_sum", _secure_sum, [1, 2, 3], expected=6, tags={"intrinsics"})
add_case(
    "federated_secure_sum_out_of_range",
    _secure_sum,
    [1, 7],
    expect_error=ExecutionError,
    tags={"intrinsics", "errors"},
    doc="A client value above max_input must fail the run with ExecutionError.",
)


def _secure_sum_struct():
    @fedcore.federated_computation(_clients(OD(a=tf.int32, b=tf.int32)))
    def secure_sum_struct(x):
        return fedcore.federated_secure_sum(x, 10)

    return secure_sum_struct


add_case(
    "federated_secure_sum_of_structs",
    _secure_sum_struct,
    [OD(a=1, b=2), OD(a=3, b=4)],
    expected=OD(a=4, b=6),
    tags={"intrinsics", "containers"},
)


def _aggregates_of_maps():
    @fedcore.tf_computation(tf.int32)
    def square(v):
        return v * v

    @fedcore.tf_computation(tf.int32)
    def halve(v):
        return tf.cast(v, tf.float32) / 2.0

    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def report(total):
        return total * 10

    @fedcore.federated_computation(_clients(tf.int32))
    def aggregates_of_maps(x):
        # Each aggregate takes its own map (a map used twice is computed once, not fused).
        return OD(
            min=fedcore.federated_min(fedcore.federated_map(square, x)),
            max=fedcore.federated_max(fedcore.federated_map(square, x)),
            sum=fedcore.federated_sum(fedcore.federated_map(halve, x)),
            mean=fedcore.federated_mean(fedcore.federated_map(halve, x)),
            weighted=fedcore.federated_mean(fedcore.federated_map(halve, x), fedcore.federated_map(halve, x)),
            aggregate=fedcore.federated_aggregate(fedcore.federated_map(square, x), 0, add, add, report),
        )

    return aggregates_of_maps


# Each aggregation of a client map: what the execution pipeline fuses into one pass over clients.
add_case(
    "aggregates_of_client_maps",
    _aggregates_of_maps,
    [3, -1, 2, 4],
    expected=OD(min=1, max=16, sum=4.0, mean=1.0, weighted=(2.25 + 0.25 + 1.0 + 4.0) / 4.0, aggregate=300),
    tags={"intrinsics"},
)

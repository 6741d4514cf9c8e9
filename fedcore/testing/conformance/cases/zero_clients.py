"""Cases: aggregates over zero clients (see fedcore/runtime/reference.py)."""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.aggregation import (
    _aggregate,
    _aggregate_struct,
    _mean,
    _min_max_float,
    _min_max_int,
    _secure_sum,
    _sum_struct,
    _weighted_mean,
)
from fedcore.testing.conformance.cases.common import OD, _add_half, _clients


add_case(
    "zero_clients_sum_gives_zeros",
    _sum_struct,
    [],
    expected=OD(a=0, b=np.array([0.0, 0.0])),
    tags={"zero_clients", "zeros"},
)
add_case("zero_clients_mean_gives_nan", _mean, [], expected=float("nan"), tags={"zero_clients"})
add_case("zero_clients_weighted_mean_gives_nan", _weighted_mean, [], [], expected=float("nan"), tags={"zero_clients"})
add_case(
    "zero_clients_min_and_max_of_floats_give_infinities",
    _min_max_float,
    [],
    expected=(float("inf"), float("-inf")),
    tags={"zero_clients"},
)
add_case(
    "zero_clients_min_and_max_of_ints_give_dtype_limits",
    _min_max_int,
    [],
    expected=OD(min=np.full([2], np.iinfo(np.int32).max), max=np.full([2], np.iinfo(np.int32).min)),
    tags={"zero_clients"},
)
add_case(
    "zero_clients_aggregate_reports_zero",
    _aggregate,
    [],
    expected=1.0,
    tags={"zero_clients"},
    doc="report(zero): 0 * 2 + 1.",
)
add_case(
    "zero_clients_aggregate_with_struct_accumulator",
    _aggregate_struct,
    [],
    expected=OD(mean=0.0, count=0),
    tags={"zero_clients", "containers"},
)
add_case("zero_clients_secure_sum", _secure_sum, [], expected=0, tags={"zero_clients", "zeros"})


def _map_and_zip():
    @fedcore.federated_computation(_clients(tf.int32), _clients(tf.float32))
    def map_and_zip(a, b):
        return fedcore.federated_map(_add_half(), b), fedcore.federated_zip((a, b))

    return map_and_zip


add_case("zero_clients_map_and_zip", _map_and_zip, [], [], expected=([], []), tags={"zero_clients"})

"""Cases: datasets in and out."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case, lazy
from fedcore.testing.conformance.cases.common import (
    OD,
    _FLOATS,
    _float_dataset,
    _server,
    _squares_table,
    _weighted_xy,
    _xy_dataset,
)


add_case(
    "tf_dataset_parameter_given_a_list",
    _weighted_xy,
    [OD(x=1.0, y=2), OD(x=3.0, y=1)],
    expected=5.0,
    tags={"datasets"},
)
add_case("tf_dataset_parameter_given_a_dataset", _weighted_xy, lazy(_xy_dataset), expected=5.0, tags={"datasets"})
add_case(
    "tf_dataset_result",
    _squares_table,
    3,
    expected=[OD(v=0, sq=0), OD(v=1, sq=1), OD(v=2, sq=4)],
    tags={"datasets", "containers"},
)


def _double_dataset():
    @fedcore.tf_computation(_FLOATS)
    def double(ds):
        return ds.map(lambda v: v * 2.0)

    return double


add_case("tf_dataset_in_and_out", _double_dataset, _float_dataset(1.0, 2.5), expected=[2.0, 5.0], tags={"datasets"})


def _clients_weighted_xy():
    @fedcore.federated_computation("{<x=float32,y=int32>*}@CLIENTS")
    def client_datasets(d):
        return fedcore.federated_map(_weighted_xy(), d)

    return client_datasets


add_case(
    "client_sequences_given_as_lists",
    _clients_weighted_xy,
    [[dict(x=1.0, y=2)], [dict(x=3.0, y=1), dict(x=1.0, y=1)], []],
    expected=[2.0, 4.0, 0.0],
    tags={"datasets"},
)
add_case(
    "client_sequences_given_as_datasets",
    _clients_weighted_xy,
    [lazy(_xy_dataset), lazy(lambda: _xy_dataset().take(1))],
    expected=[5.0, 2.0],
    tags={"datasets"},
)


def _clients_sequence_sum():
    @fedcore.federated_computation(_FLOATS)
    def local_sum(s):
        return fedcore.sequence_sum(s)

    @fedcore.federated_computation("{float32*}@CLIENTS")
    def client_sums(d):
        return fedcore.federated_map(local_sum, d), fedcore.federated_sum(fedcore.federated_map(local_sum, d))

    return client_sums


add_case(
    "client_float_sequences_as_lists_of_lists",
    _clients_sequence_sum,
    [[1.0, 2.0], [3.0], []],
    expected=([3.0, 3.0, 0.0], 6.0),
    tags={"datasets", "intrinsics"},
)
add_case(
    "client_float_sequences_as_lists_of_datasets",
    _clients_sequence_sum,
    [_float_dataset(1.0, 2.0), _float_dataset(3.0)],
    expected=([3.0, 3.0], 6.0),
    tags={"datasets", "intrinsics"},
)


def _server_dataset_result():
    @fedcore.federated_computation(_server(tf.int32))
    def table_at_server(n):
        return fedcore.federated_apply(_squares_table(), n)

    return table_at_server


add_case(
    "server_dataset_result",
    _server_dataset_result,
    2,
    expected=[OD(v=0, sq=0), OD(v=1, sq=1)],
    tags={"datasets", "containers"},
)

"""Cases: federated_map, federated_apply, federated_zip."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, Point, _add_half, _clients, _server


def _map():
    @fedcore.federated_computation(_clients(tf.float32))
    def map_add_half(x):
        return fedcore.federated_map(_add_half(), x)

    return map_add_half


add_case("federated_map", _map, [1.0, 2.0, 3.0], expected=[1.5, 2.5, 3.5], tags={"intrinsics"})


def _map_federated_fn():
    @fedcore.federated_computation(tf.float32)
    def twice(v):
        return Point(v, v)

    @fedcore.federated_computation(_clients(tf.float32))
    def map_federated_fn(x):
        return fedcore.federated_map(twice, x)

    return map_federated_fn


add_case(
    "federated_map_of_a_federated_computation",
    _map_federated_fn,
    [1.0, 2.0],
    expected=[Point(1.0, 1.0), Point(2.0, 2.0)],
    tags={"intrinsics", "lambdas", "containers"},
)


def _map_all_equal():
    @fedcore.federated_computation
    def map_all_equal():
        return fedcore.federated_map(_add_half(), fedcore.federated_value(1.0, fedcore.CLIENTS))

    return map_all_equal


add_case("federated_map_all_equal", _map_all_equal, expected=1.5, tags={"intrinsics"})


def _apply():
    @fedcore.federated_computation(_server(tf.float32))
    def apply_add_half(s):
        return fedcore.federated_apply(_add_half(), s)

    return apply_add_half


add_case("federated_apply", _apply, 2.0, expected=2.5, tags={"intrinsics"})


def _zip_clients_named():
    @fedcore.federated_computation(_clients(tf.int32), _clients(tf.float32))
    def zip_named(a, b):
        return fedcore.federated_zip(OD(a=a, b=b))

    return zip_named


add_case(
    "federated_zip_at_clients_named",
    _zip_clients_named,
    [1, 2],
    [0.5, 1.5],
    expected=[OD(a=1, b=0.5), OD(a=2, b=1.5)],
    tags={"intrinsics", "containers"},
)


def _zip_clients_all_equal():
    @fedcore.federated_computation
    def zip_all_equal():
        return fedcore.federated_zip(
            Point(fedcore.federated_value(1, fedcore.CLIENTS), fedcore.federated_value(2.0, fedcore.CLIENTS))
        )

    return zip_all_equal


add_case(
    "federated_zip_at_clients_of_all_equal_values",
    _zip_clients_all_equal,
    num_clients=2,
    expected=[Point(1, 2.0), Point(1, 2.0)],
    tags={"intrinsics", "num_clients", "containers"},
)


def _zip_server():
    @fedcore.federated_computation(_server(tf.int32), _server(tf.float32))
    def zip_at_server(a, b):
        return fedcore.federated_zip(Point(a, b))

    return zip_at_server


add_case("federated_zip_at_server", _zip_server, 1, 2.0, expected=Point(1, 2.0), tags={"intrinsics", "containers"})

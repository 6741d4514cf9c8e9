"""Cases: federated_value, federated_broadcast, federated_eval."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, _add_half, _clients, _server, _seven


def _value_at_server():
    @fedcore.federated_computation
    def value_at_server():
        return fedcore.federated_value(10, fedcore.SERVER)

    return value_at_server


add_case("federated_value_at_server", _value_at_server, expected=10, tags={"intrinsics"})


def _value_at_server_struct():
    @fedcore.federated_computation
    def value_at_server_struct():
        return fedcore.federated_value(OD(greeting="Hello", count=3), fedcore.SERVER)

    return value_at_server_struct


add_case(
    "federated_value_at_server_struct_of_string",
    _value_at_server_struct,
    expected=OD(greeting="Hello", count=3),
    tags={"intrinsics", "strings", "containers"},
)


def _value_at_clients():
    @fedcore.federated_computation
    def value_at_clients():
        return fedcore.federated_value(2.5, fedcore.CLIENTS)

    return value_at_clients


add_case("federated_value_at_clients", _value_at_clients, num_clients=3, expected=2.5, tags={"intrinsics"})


def _value_at_clients_summed():
    @fedcore.federated_computation
    def count_clients():
        return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))

    return count_clients


add_case(
    "federated_value_at_clients_summed",
    _value_at_clients_summed,
    num_clients=4,
    expected=4,
    tags={"intrinsics", "num_clients"},
    doc="An all-equal value summed over clients: the executor must use the client count it is given.",
)


def _broadcast_zip():
    @fedcore.federated_computation(_server(tf.int32), _clients(tf.float32))
    def broadcast_zip(s, c):
        return fedcore.federated_zip((fedcore.federated_broadcast(s), c))

    return broadcast_zip


add_case(
    "federated_broadcast_zipped_with_client_values",
    _broadcast_zip,
    3,
    [1.0, 2.0],
    expected=[(3, 1.0), (3, 2.0)],
    tags={"intrinsics"},
)


def _broadcast_map():
    @fedcore.federated_computation(_server(tf.float32))
    def broadcast_map(s):
        return fedcore.federated_map(_add_half(), fedcore.federated_broadcast(s))

    return broadcast_map


add_case("federated_broadcast_then_map_all_equal", _broadcast_map, 2.0, expected=2.5, tags={"intrinsics"})


def _broadcast_sum():
    @fedcore.federated_computation(_server(tf.float32))
    def broadcast_sum(s):
        return fedcore.federated_sum(fedcore.federated_broadcast(s))

    return broadcast_sum


add_case(
    "federated_broadcast_then_sum",
    _broadcast_sum,
    2.0,
    num_clients=3,
    expected=6.0,
    tags={"intrinsics", "num_clients"},
)


def _eval_at_server():
    @fedcore.federated_computation
    def eval_at_server():
        return fedcore.federated_eval(_seven(), fedcore.SERVER)

    return eval_at_server


add_case("federated_eval_at_server", _eval_at_server, expected=7, tags={"intrinsics"})


def _eval_at_clients():
    @fedcore.federated_computation
    def eval_at_clients():
        return fedcore.federated_eval(_seven(), fedcore.CLIENTS)

    return eval_at_clients


add_case(
    "federated_eval_at_clients",
    _eval_at_clients,
    num_clients=3,
    expected=[7, 7, 7],
    tags={"intrinsics", "num_clients"},
)

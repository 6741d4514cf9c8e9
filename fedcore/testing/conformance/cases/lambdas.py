"""Cases: lambdas, blocks and selections."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, Point, _clients, _server


def _nested_computations():
    @fedcore.federated_computation(_clients(tf.float32))
    def inner(x):
        return fedcore.federated_mean(x)

    @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
    def outer(x, y):
        return inner(x), inner(y), inner(x)

    return outer


add_case(
    "computation_calling_a_computation",
    _nested_computations,
    [1.0, 2.0],
    [3.0, 5.0],
    expected=(1.5, 4.0, 1.5),
    tags={"lambdas"},
)


def _squared_deviations():
    @fedcore.federated_computation(_clients(tf.float32))
    def center(x):
        return fedcore.federated_broadcast(fedcore.federated_mean(x))

    @fedcore.tf_computation(tf.float32, tf.float32)
    def squared_difference(v, m):
        return (v - m) * (v - m)

    @fedcore.federated_computation(_clients(tf.float32))
    def squared_deviations(x):
        return fedcore.federated_sum(fedcore.federated_map(squared_difference, fedcore.federated_zip((x, center(x)))))

    return squared_deviations


add_case(
    "blocks_across_placements",
    _squared_deviations,
    [1.0, 2.0, 3.0, 6.0],
    expected=14.0,
    tags={"lambdas", "intrinsics"},
    doc="mean 3, deviations -2,-1,0,3: squares sum to 14.",
)


def _struct_selection():
    @fedcore.federated_computation(OD(a=tf.int32, b=[tf.float32, tf.string]))
    def select_fields(x):
        return x.b[1], x.a, x["b"][0]

    return select_fields


add_case(
    "selection_by_name_and_index",
    _struct_selection,
    OD(a=1, b=[2.0, "s"]),
    expected=("s", 1, 2.0),
    tags={"lambdas", "strings"},
)


def _federated_selection_clients():
    @fedcore.federated_computation(_clients(Point(tf.int32, tf.float32)))
    def select_at_clients(p):
        return fedcore.federated_sum(p.x), fedcore.federated_mean(p[1])

    return select_at_clients


add_case(
    "selection_on_client_structs",
    _federated_selection_clients,
    [Point(1, 2.0), Point(3, 4.0)],
    expected=(4, 3.0),
    tags={"lambdas"},
)


def _federated_selection_server():
    @fedcore.federated_computation(_server(Point(tf.int32, tf.float32)))
    def select_at_server(p):
        return p.y, p[0]

    return select_at_server


add_case(
    "selection_on_a_server_struct",
    _federated_selection_server,
    Point(1, 2.0),
    expected=(2.0, 1),
    tags={"lambdas"},
)


def _federated_selection_all_equal():
    @fedcore.federated_computation(_clients(Point(tf.int32, tf.float32), all_equal=True))
    def select_all_equal(p):
        return p.y

    return select_all_equal


add_case(
    "selection_on_an_all_equal_client_struct",
    _federated_selection_all_equal,
    Point(1, 2.0),
    expected=2.0,
    tags={"lambdas"},
)


def _nested_result():
    @fedcore.federated_computation(_clients(tf.float32))
    def statistics(x):
        return [
            fedcore.federated_sum(x),
            {"mean": fedcore.federated_mean(x), "range": (fedcore.federated_min(x), fedcore.federated_max(x))},
        ]

    return statistics


add_case(
    "nested_result_containers",
    _nested_result,
    [1.0, 3.0],
    expected=[4.0, {"mean": 2.0, "range": (1.0, 3.0)}],
    tags={"containers"},
)


def _broadcast_into_a_clients_parameter():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add(w, x):
        return w + x

    @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
    def client_work(a, b):
        return fedcore.federated_map(add, fedcore.federated_zip((a, b)))

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32))
    def round_(w, x):
        # A broadcast value (all-equal) passed where the computation takes one value per client.
        return fedcore.federated_sum(client_work(fedcore.federated_broadcast(w), x))

    return round_


add_case(
    "all_equal_value_into_a_per_client_parameter",
    _broadcast_into_a_clients_parameter,
    1.0,
    [1.0, 3.0],
    expected=6.0,
    tags={"lambdas", "placement"},
)

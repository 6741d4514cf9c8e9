"""Cases: nested computations that use their enclosing computation's parameters and locals."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import _clients, _server


def _add():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add(a, b):
        return a + b

    return add


def _captured_parameter():
    add = _add()

    @fedcore.federated_computation(tf.float32, tf.float32)
    def outer(p, q):
        @fedcore.federated_computation(tf.float32, tf.float32)
        def inner(a, b):
            return add(a, p)  # p is outer's parameter; inner's own parameters are a and b

        return inner(q, q)

    return outer


add_case(
    "nested_computation_reads_an_outer_parameter",
    _captured_parameter,
    1.0,
    10.0,
    expected=11.0,
    tags={"lambdas", "scoping"},
    doc="inner(q, q) adds outer's p to its first argument: 10 + 1.",
)


def _captured_local():
    add = _add()

    @fedcore.federated_computation(tf.float32, tf.float32)
    def outer(p, q):
        s = add(p, q)  # a local of outer

        @fedcore.federated_computation(tf.float32)
        def inner(a):
            t = add(a, a)  # inner's own local
            return add(t, s)

        return add(inner(p), inner(q))

    return outer


add_case(
    "nested_computation_reads_an_outer_local",
    _captured_local,
    1.0,
    10.0,
    expected=(2.0 + 11.0) + (20.0 + 11.0),
    tags={"lambdas", "scoping"},
)


def _local_train():
    """The shape of a client-training loop: the learning rate belongs to the enclosing computation."""

    @fedcore.tf_computation(tf.float32, tf.float32, tf.float32)
    def step(w, x, lr):
        return w - lr * (w - x)

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32), _server(tf.float32))
    def train(w, x, lr):
        @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
        def one_step(w_clients, data):
            lr_clients = fedcore.federated_broadcast(lr)  # lr: the enclosing computation's parameter
            return fedcore.federated_map(step, fedcore.federated_zip((w_clients, data, lr_clients)))

        w_clients = fedcore.federated_broadcast(w)
        return fedcore.federated_mean(one_step(one_step(w_clients, x), x))

    return train


add_case(
    "nested_computation_reads_an_outer_federated_parameter",
    _local_train,
    0.0,
    [1.0, 3.0],
    0.5,
    expected=1.5,
    tags={"lambdas", "scoping"},
    doc="two steps w -> w - 0.5 (w - x) from 0: x/2 then 3x/4; the mean of 0.75 and 2.25.",
)


def _same_names_three_deep():
    add = _add()

    @fedcore.federated_computation(tf.float32)
    def level1(x):
        @fedcore.federated_computation(tf.float32)
        def level2(x2):
            y = add(x2, x)  # x: level1's parameter

            @fedcore.federated_computation(tf.float32)
            def level3(x3):
                return add(add(x3, y), x)  # y: level2's local, x: level1's parameter

            return level3(y)

        return level2(add(x, x))

    return level1


add_case(
    "three_levels_of_captures",
    _same_names_three_deep,
    1.0,
    expected=((2.0 + 1.0) + (2.0 + 1.0)) + 1.0,
    tags={"lambdas", "scoping"},
)

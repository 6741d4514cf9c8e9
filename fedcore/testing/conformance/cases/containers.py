"""Cases: Python containers in and out."""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.structure import Struct
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import OD, Pair, Point, _clients


def _namedtuple_identity():
    @fedcore.federated_computation(Point(tf.int32, tf.float32))
    def identity(p):
        return p

    return identity


add_case(
    "namedtuple_argument_given_as_dict",
    _namedtuple_identity,
    dict(x=1, y=2.0),
    expected=Point(1, 2.0),
    tags={"containers"},
)


def _attrs_identity():
    @fedcore.federated_computation(Pair(a=tf.int32, b=[tf.float32, tf.float32]))
    def identity(p):
        return p

    return identity


add_case(
    "attrs_argument_with_nested_list",
    _attrs_identity,
    Pair(1, [2.0, 3.0]),
    expected=Pair(1, [2.0, 3.0]),
    tags={"containers"},
)


def _struct_identity():
    @fedcore.federated_computation("<a=int32,b=<float32,float32>>")
    def identity(s):
        return s

    return identity


add_case(
    "struct_type_without_container_gives_Struct",
    _struct_identity,
    dict(a=1, b=[2.0, 3.0]),
    expected=Struct([("a", 1), ("b", (2.0, 3.0))]),
    tags={"containers"},
)


def _client_containers():
    @fedcore.federated_computation(_clients(OD(p=Point(tf.int32, tf.float32), q=Pair(a=tf.string, b=tf.bool))))
    def identity(x):
        return x

    return identity


add_case(
    "client_values_in_containers",
    _client_containers,
    [OD(p=Point(1, 2.0), q=Pair("u", True)), OD(p=Point(3, 4.0), q=Pair("v", False))],
    expected=[OD(p=Point(1, 2.0), q=Pair("u", True)), OD(p=Point(3, 4.0), q=Pair("v", False))],
    tags={"containers", "strings"},
)


def _tf_containers():
    @fedcore.tf_computation
    def make_containers():
        return Pair(a=tf.constant(1), b=OD(u=tf.constant(2.0), v=Point(tf.constant("w"), tf.constant([1, 2]))))

    return make_containers


add_case(
    "tf_computation_returning_containers",
    _tf_containers,
    expected=Pair(a=1, b=OD(u=2.0, v=Point("w", np.array([1, 2])))),
    tags={"containers", "strings"},
)

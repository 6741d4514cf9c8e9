"""Cases: sequence intrinsics, generic_plus and generic_zero."""

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.structure import Struct
from fedcore.testing.conformance.case import add_case, lazy
from fedcore.testing.conformance.cases.common import OD, _FLOATS, _float_dataset


def _sequence_map():
    @fedcore.tf_computation(tf.float32)
    def times_three(v):
        return v * 3.0

    @fedcore.federated_computation(_FLOATS)
    def seq_map(s):
        return fedcore.sequence_map(times_three, s)

    return seq_map


add_case("sequence_map_of_a_list", _sequence_map, [1.0, 2.0], expected=[3.0, 6.0], tags={"intrinsics", "datasets"})
add_case(
    "sequence_map_of_a_dataset",
    _sequence_map,
    _float_dataset(1.0, 2.0),
    expected=[3.0, 6.0],
    tags={"intrinsics", "datasets"},
)


def _sequence_reduce():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add_square(acc, v):
        return acc + v * v

    @fedcore.federated_computation(_FLOATS)
    def sum_of_squares(s):
        return fedcore.sequence_reduce(s, 0.0, add_square)

    return sum_of_squares


add_case("sequence_reduce", _sequence_reduce, [1.0, 2.0, 3.0], expected=14.0, tags={"intrinsics", "datasets"})


def _sequence_sum_struct():
    @fedcore.federated_computation("<a=int32,b=float32>*")
    def seq_sum(s):
        return fedcore.sequence_sum(s)

    return seq_sum


add_case(
    "sequence_sum_of_structs_in_a_list",
    _sequence_sum_struct,
    [dict(a=1, b=2.0), dict(a=3, b=4.0)],
    expected=Struct.named(a=4, b=6.0),
    tags={"intrinsics", "datasets"},
)
add_case(
    "sequence_sum_of_structs_in_a_dataset",
    _sequence_sum_struct,
    lazy(lambda: tf.data.Dataset.from_tensor_slices(OD(a=[1, 3], b=[2.0, 4.0]))),
    expected=Struct.named(a=4, b=6.0),
    tags={"intrinsics", "datasets"},
)


def _sequence_sum_empty():
    @fedcore.federated_computation(_FLOATS)
    def seq_sum(s):
        return fedcore.sequence_sum(s)

    return seq_sum


add_case(
    "sequence_sum_of_an_empty_sequence",
    _sequence_sum_empty,
    [],
    expected=0.0,
    tags={"intrinsics", "datasets", "zeros"},
    doc="The sum of no elements is the zero of the element type (generic_zero's meaning).",
)


def _generic_plus():
    from fedcore.compiler.federated_api import call_intrinsic
    from fedcore.compiler.tracing import to_node

    @fedcore.federated_computation((tf.float32, [3]), (tf.float32, [3]))
    def generic_plus(a, b):
        # Not reachable from the public API: call the intrinsic directly.
        return call_intrinsic("generic_plus", bb.Struct([(None, to_node(a)), (None, to_node(b))]))

    return generic_plus


add_case(
    "generic_plus",
    _generic_plus,
    [1.0, 2.0, 3.0],
    [1.0, 1.0, 1.0],
    expected=np.array([2.0, 3.0, 4.0]),
    tags={"intrinsics"},
)


def _generic_zero():
    zero_type = fedcore.to_type(OD(a=(tf.int32, [2]), b=tf.float32))

    @fedcore.federated_computation
    def generic_zero():
        # Not reachable from the public API: the intrinsic at a concrete type.
        return bb.Intrinsic("generic_zero", zero_type)

    return generic_zero


add_case("generic_zero", _generic_zero, expected=OD(a=np.array([0, 0]), b=0.0), tags={"intrinsics", "zeros"})

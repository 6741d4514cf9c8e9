"""Cases: polymorphic computations, called at several types."""

import functools

import numpy as np
import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case, lazy
from fedcore.testing.conformance.cases.common import OD


@functools.lru_cache(maxsize=None)
def _poly_swap():
    @fedcore.federated_computation
    def swap(x, y):
        return OD(first=y, second=x)

    return swap


add_case("polymorphic_federated_scalars", _poly_swap, 1, 2.0, expected=OD(first=2.0, second=1), tags={"polymorphism"})
add_case(
    "polymorphic_federated_string_and_list",
    _poly_swap,
    "a",
    [1, 2],
    expected=OD(first=[1, 2], second="a"),
    tags={"polymorphism", "strings"},
)
add_case(
    "polymorphic_federated_keywords_out_of_order",
    _poly_swap,
    kwargs=dict(y=2, x=1),
    expected=OD(first=2, second=1),
    tags={"polymorphism", "keywords"},
)


@functools.lru_cache(maxsize=None)
def _poly_double():
    @fedcore.tf_computation
    def double(x):
        return x * 2

    return double


add_case("polymorphic_tf_int", _poly_double, 3, expected=6, tags={"polymorphism"})
add_case("polymorphic_tf_float", _poly_double, 1.25, expected=2.5, tags={"polymorphism"})
add_case(
    "polymorphic_tf_int64_array",
    _poly_double,
    np.array([1, 2], np.int64),
    expected=np.array([2, 4]),
    tags={"polymorphism"},
)


def _poly_dataset_sum():
    @fedcore.tf_computation
    def total(ds):
        return ds.reduce(np.int64(0), lambda acc, v: acc + v)

    return total


add_case(
    "polymorphic_tf_dataset",
    _poly_dataset_sum,
    lazy(lambda: tf.data.Dataset.range(5)),
    expected=10,
    tags={"polymorphism", "datasets"},
)


def _poly_calls_poly():
    @fedcore.federated_computation
    def apply_double(x):
        return _poly_double()(x)

    return apply_double


add_case("polymorphic_federated_calling_polymorphic_tf", _poly_calls_poly, 1.5, expected=3.0, tags={"polymorphism"})

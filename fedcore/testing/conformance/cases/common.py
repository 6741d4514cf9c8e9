"""Containers and small computations shared by the case modules."""

from __future__ import annotations

import collections
import functools
from typing import Any

import attrs
import numpy as np
import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import lazy


Point = collections.namedtuple("Point", ["x", "y"])


@attrs.frozen
class Pair:
    a: Any
    b: Any


OD = collections.OrderedDict

_clients = fedcore.type_at_clients
_server = fedcore.type_at_server
_FLOATS = "float32*"


@functools.lru_cache(maxsize=None)
def _add_half():
    @fedcore.tf_computation(tf.float32)
    def add_half(x):
        return x + 0.5

    return add_half


@functools.lru_cache(maxsize=None)
def _seven():
    @fedcore.tf_computation
    def seven():
        return tf.constant(7)

    return seven


@functools.lru_cache(maxsize=None)
def _weighted_xy():
    @fedcore.tf_computation("<x=float32,y=int32>*")
    def weighted_xy(ds):
        return ds.reduce(0.0, lambda acc, e: acc + e["x"] * tf.cast(e["y"], tf.float32))

    return weighted_xy


@functools.lru_cache(maxsize=None)
def _squares_table():
    @fedcore.tf_computation(tf.int32)
    def squares_table(n):
        def row(v):
            return OD(v=v, sq=v * v)

        return tf.data.Dataset.range(tf.cast(n, tf.int64)).map(row)

    return squares_table


@functools.lru_cache(maxsize=None)
def _two_params_tf():
    @fedcore.tf_computation(tf.int32, tf.float32)
    def int_plus_float(a, b):
        return tf.cast(a, tf.float32) + b

    return int_plus_float


def _xy_dataset():
    return tf.data.Dataset.from_tensor_slices(OD(x=[1.0, 3.0], y=[2, 1]))


def _float_dataset(*values: float):
    def make():
        return tf.data.Dataset.from_tensor_slices(np.asarray(values, np.float32))

    make.__name__ = f"dataset{values}"
    return lazy(make)

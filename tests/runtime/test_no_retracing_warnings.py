"""TFF-style code calling computations at new types, and many times, gets no tf.function retracing warnings."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime import FallbackExecutor
from fedcore.runtime.tensorflow import TensorFlowExecutor


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@fedcore.tf_computation
def double(x):
    return x + x


@fedcore.tf_computation(tf.float32)
def square(x):
    return x * x


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def mean_square(xs):
    return fedcore.federated_mean(fedcore.federated_map(square, xs))


EIGHT_ARGUMENTS = [np.ones([n], np.float32) for n in (1, 2, 3)] + [
    np.ones([2], dtype) for dtype in (np.int32, np.int64, np.float64, np.float16)
] + [np.ones([2, 2], np.float32)]


@pytest.mark.parametrize(
    "make_executor", [FallbackExecutor, TensorFlowExecutor, fedcore.ReferenceExecutor], ids=["default", "tf", "reference"]
)
def test_no_retracing_warning(make_executor, capfd):
    collect = Collect()
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(collect)
    try:
        with fedcore.execution_context(make_executor()):
            assert len({str(fedcore.compiler.tracing.infer_type(a)) for a in EIGHT_ARGUMENTS}) == 8
            for argument in EIGHT_ARGUMENTS:  # a polymorphic computation at 8 types
                np.testing.assert_array_equal(double(argument), argument + argument)
            for i in range(10):  # one computation called 10 times
                assert square(float(i)) == i * i
                assert mean_square([1.0, float(i)]) == pytest.approx((1 + i * i) / 2)
            for n in range(1, 9):  # and at 8 client counts, 8 programs
                assert mean_square([2.0] * n) == pytest.approx(4.0)
    finally:
        tf_logger.removeHandler(collect)
    err = capfd.readouterr().err
    assert not [m for m in collect.messages if "retracing" in m], collect.messages
    assert "retracing" not in err

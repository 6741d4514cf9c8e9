"""Computations that capture tf.Variables created outside them: each sees its own variables.

The TF executor caches compiled programs by content, and a computation that
captures variables is keyed by them too. Keying by ``id()`` once let a new
computation run as an old one's cached program, on the old (dead) variable's
resource: a silently wrong result once a freed address was reused.
"""

import gc

import hypothesis.strategies as st
import pytest
import tensorflow as tf
from hypothesis import given, settings

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor


def _reads(value):
    variable = tf.Variable(value)

    @fedcore.tf_computation(tf.float32)
    def read(x):
        return x + variable.read_value()

    return read


@settings(max_examples=3, deadline=None)
@given(values=st.lists(st.floats(-100, 100, width=32), min_size=16, max_size=16))
def test_fresh_variables_never_run_an_old_computations_program(values):
    executor = TensorFlowExecutor()
    for value in values:
        comp = _reads(value)
        with fedcore.execution_context(executor):
            assert float(comp(0.0)) == pytest.approx(value)
        del comp
        gc.collect()  # frees the variable's address for the next one


def test_the_default_executor_keeps_live_variables_apart():
    comps = [_reads(float(k)) for k in range(5)]
    assert [float(c(1.0)) for c in comps] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_dead_variables_token_is_never_given_again():
    from fedcore.runtime.tensorflow import executor

    first = tf.Variable(1.0)
    address, token = id(first), executor._variable_token(first)
    assert executor._variable_token(first) == token  # stable while the variable lives
    del first
    gc.collect()
    assert address not in executor._tokens  # forgotten with the variable: its address may be reused
    later = [tf.Variable(2.0) for _ in range(50)]
    assert all(executor._variable_token(v) > token for v in later)

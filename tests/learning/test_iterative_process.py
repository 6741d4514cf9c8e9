"""IterativeProcess: checks its two computations and prints cleanly."""

import pytest
import tensorflow as tf

import fedcore
from fedcore.learning import IterativeProcess


@fedcore.federated_computation
def initialize():
    return fedcore.federated_value(0, fedcore.SERVER)


@fedcore.federated_computation(fedcore.type_at_server(tf.int32))
def count(state):
    return fedcore.federated_map(fedcore.tf_computation(lambda x: x + 1, tf.int32), state)


@fedcore.federated_computation(fedcore.type_at_server(tf.int32), fedcore.type_at_clients(tf.float32))
def count_and_mean(state, values):
    return count(state), fedcore.federated_mean(values)


def test_a_counter():
    process = IterativeProcess(initialize, count)
    state = process.initialize()
    for _ in range(3):
        state = process.next(state)
    assert state == 3
    assert repr(process) == "IterativeProcess(\n  initialize: ( -> int32@SERVER),\n  next: (int32@SERVER -> int32@SERVER),\n)"
    assert str(process.state_type) == "int32@SERVER"


def test_next_with_more_inputs_and_outputs():
    process = IterativeProcess(initialize, count_and_mean)
    state, mean = process.next(process.initialize(), [1.0, 3.0])
    assert state == 1 and mean == 2.0


def test_mismatched_computations_are_refused():
    @fedcore.federated_computation(fedcore.type_at_server(tf.float32))
    def takes_float(state):
        return state

    @fedcore.federated_computation(fedcore.type_at_server(tf.int32))
    def returns_float(state):
        return fedcore.federated_value(1.0, fedcore.SERVER)

    with pytest.raises(TypeError, match="initialize_fn must take no arguments"):
        IterativeProcess(count, count)
    with pytest.raises(TypeError, match="cannot take the state"):
        IterativeProcess(initialize, takes_float)
    with pytest.raises(TypeError, match="must keep its type"):
        IterativeProcess(initialize, returns_float)
    with pytest.raises(TypeError, match="must be a fedcore computation"):
        IterativeProcess(lambda: 0, count)

"""TFF's tutorial "Custom Federated Algorithms, Part 1: Introduction to the Federated Core", as tests.

The code cells of ``docs/tutorials/custom_federated_algorithms_1.ipynb`` (TFF
at commit 12f9af62b, 2021-09-02), in order, with ``tff.`` written ``fedcore.``;
each test checks what the notebook printed.  Differences from TFF's printed
output are listed in docs/tff_migration.md ("Differences seen in the tutorials").
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore


def test_hello_world(executor):
    @fedcore.federated_computation
    def hello_world():
        return 'Hello, World!'

    # TFF returns b'Hello, World!': its runtime hands strings back as bytes.
    assert hello_world() == 'Hello, World!'


def test_federated_types():
    federated_float_on_clients = fedcore.type_at_clients(tf.float32)

    assert str(federated_float_on_clients.member) == 'float32'
    assert str(federated_float_on_clients.placement) == 'CLIENTS'
    assert str(federated_float_on_clients) == '{float32}@CLIENTS'
    assert federated_float_on_clients.all_equal is False
    assert str(fedcore.type_at_clients(tf.float32, all_equal=True)) == 'float32@CLIENTS'

    simple_regression_model_type = (
        fedcore.StructType([('a', tf.float32), ('b', tf.float32)]))
    assert str(simple_regression_model_type) == '<a=float32,b=float32>'
    assert str(fedcore.type_at_clients(
        simple_regression_model_type, all_equal=True)) == '<a=float32,b=float32>@CLIENTS'


def test_federated_computation(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def get_average_temperature(sensor_readings):
        return fedcore.federated_mean(sensor_readings)

    assert str(get_average_temperature.type_signature) == '({float32}@CLIENTS -> float32@SERVER)'
    assert get_average_temperature([68.5, 70.3, 69.8]) == pytest.approx(69.53333, abs=1e-4)


def test_tracing_happens_once_at_definition(executor, capsys):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def get_average_temperature(sensor_readings):

        print ('Getting traced, the argument is "{}".'.format(
            type(sensor_readings).__name__))

        return fedcore.federated_mean(sensor_readings)

    # TFF's tracer names its class ValueImpl; fedcore's is Value.
    assert capsys.readouterr().out == 'Getting traced, the argument is "Value".\n'
    assert get_average_temperature([1.0, 2.0]) == pytest.approx(1.5)
    assert capsys.readouterr().out == ''  # calling runs the traced program; the Python body is not run again


@fedcore.tf_computation(tf.float32)
def add_half(x):
    return tf.add(x, 0.5)


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def add_half_on_clients(x):
    return fedcore.federated_map(add_half, x)


def test_tensorflow_computation(executor):
    assert str(add_half.type_signature) == '(float32 -> float32)'
    assert str(add_half_on_clients.type_signature) == '({float32}@CLIENTS -> {float32}@CLIENTS)'
    result = add_half_on_clients([1.0, 3.0, 2.0])
    # TFF shows a list of tf.Tensors; fedcore returns numpy values.
    assert [float(x) for x in result] == [1.5, 3.5, 2.5]


def test_captured_eager_tensor(executor):
    # TFF fails here with "Attempting to capture an EagerTensor without building a
    # function."; fedcore traces with tf.function, which captures the eager
    # tensor as a constant of the computation.
    constant_10 = tf.constant(10.)

    @fedcore.tf_computation(tf.float32)
    def add_ten(x):
        return x + constant_10

    assert add_ten(5.0) == 15.0


def test_constant_made_inside_the_computation(executor):
    def get_constant_10():
        return tf.constant(10.)

    @fedcore.tf_computation(tf.float32)
    def add_ten(x):
        return x + get_constant_10()

    assert add_ten(5.0) == 15.0


@fedcore.tf_computation(fedcore.SequenceType(tf.float32))
def get_local_temperature_average(local_temperatures):
    sum_and_count = (
        local_temperatures.reduce((0.0, 0), lambda x, y: (x[0] + y, x[1] + 1)))
    return sum_and_count[0] / tf.cast(sum_and_count[1], tf.float32)


def test_sequences(executor, capsys):
    float32_sequence = fedcore.SequenceType(tf.float32)
    assert str(float32_sequence) == 'float32*'
    assert str(get_local_temperature_average.type_signature) == '(float32* -> float32)'

    @fedcore.tf_computation(fedcore.SequenceType(tf.int32))
    def foo(x):
        return x.reduce(np.int32(0), lambda x, y: x + y)

    assert foo([1, 2, 3]) == 6
    assert get_local_temperature_average([68.5, 70.3, 69.8]) == pytest.approx(69.53333, abs=1e-4)

    capsys.readouterr()

    @fedcore.tf_computation(fedcore.SequenceType(collections.OrderedDict([('A', tf.int32), ('B', tf.int32)])))
    def foo(ds):
        print('element_structure = {}'.format(ds.element_spec))
        return ds.reduce(np.int32(0), lambda total, x: total + x['A'] * x['B'])

    expected_spec = collections.OrderedDict(A=tf.TensorSpec(shape=(), dtype=tf.int32),
                                            B=tf.TensorSpec(shape=(), dtype=tf.int32))
    assert capsys.readouterr().out == 'element_structure = {}\n'.format(expected_spec)
    assert str(foo.type_signature) == '(<A=int32,B=int32>* -> int32)'
    assert foo([{'A': 2, 'B': 3}, {'A': 4, 'B': 5}]) == 26


def test_putting_it_all_together(executor):
    @fedcore.federated_computation(
        fedcore.type_at_clients(fedcore.SequenceType(tf.float32)))
    def get_global_temperature_average(sensor_readings):
        return fedcore.federated_mean(
            fedcore.federated_map(get_local_temperature_average, sensor_readings))

    assert str(get_global_temperature_average.type_signature) == '({float32*}@CLIENTS -> float32@SERVER)'
    # The mean of the clients' means (69, 71, 70), not of all six readings.
    assert get_global_temperature_average([[68.0, 70.0], [71.0], [68.0, 72.0, 70.0]]) == pytest.approx(70.0)

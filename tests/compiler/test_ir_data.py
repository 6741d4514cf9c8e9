"""The IR as data: what a TensorFlowComputation node refers to, and content fingerprints."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import serialization
from fedcore.compiler.tf_function import TFFunction

VECTOR = fedcore.to_type((tf.float32, [None]))
PAIR = fedcore.to_type(collections.OrderedDict(a=tf.float32, b=tf.int32))

PROTOCOL = ("name", "parameter_type", "result_type", "fingerprint", "writes_variables", "call_leaves", "graph_call")


def _scale_and_count():
    @fedcore.tf_computation(VECTOR, PAIR)
    def scale_and_count(v, pair):
        return collections.OrderedDict(total=tf.reduce_sum(v) * pair["a"], n=tf.size(v) + pair["b"])

    return scale_and_count


def _fold_dataset():
    @fedcore.tf_computation(tf.float32, fedcore.SequenceType(VECTOR))
    def fold(start, ds):
        total = start
        for batch in ds.map(lambda x: x * 2.0):
            total += tf.reduce_sum(batch)
        return total

    return fold


def _leaves():
    return [tf.constant([1.0, 2.0, 3.0]), tf.constant(0.5), tf.constant(4)]


def test_traced_and_imported_functions_report_the_same_interface():
    traced = _scale_and_count().ir.function
    imported = fedcore.deserialize(fedcore.serialize(_scale_and_count())).ir.function
    assert isinstance(traced, TFFunction) and isinstance(imported, serialization.ImportedTFFunction)
    for fn in (traced, imported):
        for member in PROTOCOL:
            assert hasattr(fn, member), f"{type(fn).__name__} lacks {member}"
    assert (traced.name, traced.parameter_type, traced.result_type) == (
        imported.name, imported.parameter_type, imported.result_type)
    assert traced.writes_variables is imported.writes_variables is False
    # Nothing was captured, so the graph is stored as traced and the content is the same.
    assert traced.fingerprint == imported.fingerprint
    eager = [np.asarray(x).item() for x in traced.call_leaves(_leaves())]
    assert [np.asarray(x).item() for x in imported.call_leaves(_leaves())] == pytest.approx(eager)
    assert eager == pytest.approx([3.0, 7])

    @tf.function
    def inside_another_graph(*leaves):
        return traced.graph_call(list(leaves)) + imported.graph_call(list(leaves))

    both = [np.asarray(x).item() for x in inside_another_graph(*_leaves())]
    assert both == pytest.approx(eager + eager)


def test_fingerprints_are_content_hashes():
    first, second = _scale_and_count().ir.function, _scale_and_count().ir.function
    assert first is not second
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 64 and int(first.fingerprint, 16) >= 0
    # Library functions (a dataset map, a reduce loop) are named by a counter in TF; not here.
    assert _fold_dataset().ir.function.fingerprint == _fold_dataset().ir.function.fingerprint

    @fedcore.tf_computation(VECTOR, PAIR)
    def different_code(v, pair):
        return collections.OrderedDict(total=tf.reduce_sum(v) * pair["a"] + 1.0, n=tf.size(v) + pair["b"])

    @fedcore.tf_computation(fedcore.to_type((tf.float32, [3])), PAIR)
    def other_types(v, pair):
        return collections.OrderedDict(total=tf.reduce_sum(v) * pair["a"], n=tf.size(v) + pair["b"])

    assert len({first.fingerprint, different_code.ir.function.fingerprint, other_types.ir.function.fingerprint,
                _fold_dataset().ir.function.fingerprint}) == 4


def test_keras_layer_names_do_not_change_fingerprints():
    import keras

    def make():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # dense, then dense_1, ...

        @fedcore.tf_computation(fedcore.to_type((tf.float32, [None, 4])))
        def forward(x):
            return model(x)

        return forward

    first, second = make(), make()
    assert first.ir.function.fingerprint == second.ir.function.fingerprint


def test_printed_ir_depends_only_on_the_program():
    def program():
        add_half = fedcore.tf_computation(lambda x: x + 0.5, tf.float32)

        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def round_(x):
            return fedcore.federated_mean(fedcore.federated_map(add_half, x))

        return round_

    first, second = program(), program()
    assert first.to_ir_string() == second.to_ir_string()
    node = next(n for n in bb.walk(first.ir) if isinstance(n, bb.TensorFlowComputation))
    assert node.id == node.function.fingerprint[:8]
    assert f"comp#{node.id}" in first.to_ir_string()


def test_captured_tensors_are_part_of_the_content():
    def adding(values):
        offset = tf.constant(values)  # an eager tensor: captured by the graph, not a constant in it

        @fedcore.tf_computation(fedcore.to_type((tf.float32, [2])))
        def add(x):
            return x + offset

        return add.ir.function

    assert adding([1.0, 2.0]).concrete_function.captured_inputs
    assert adding([1.0, 2.0]).fingerprint == adding([1.0, 2.0]).fingerprint != adding([1.0, 3.0]).fingerprint

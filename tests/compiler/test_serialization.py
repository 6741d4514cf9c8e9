"""Safe serialization: round trips of the conformance cases, FedAvg on both executors, and malformed files."""

import collections
import json
import pickle
import pickletools

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import serialization
from fedcore.compiler.computation import Computation
from fedcore.compiler.serialization import SerializationError, deserialize, serialize
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.testing import conformance

_COMPUTATION_CASES = [c for c in conformance.CASES if isinstance(c.build(), Computation)]


def _roundtrip(comp):
    return deserialize(serialize(comp))


def test_exports():
    assert fedcore.serialize is serialize
    assert fedcore.deserialize is deserialize
    assert issubclass(SerializationError, ValueError)


def test_most_conformance_cases_are_computations():
    # The rest are polymorphic computations, which have no type signature to serialize.
    assert len(_COMPUTATION_CASES) >= 80
    assert any(c.expect_error for c in _COMPUTATION_CASES)


@conformance.parametrize(cases=_COMPUTATION_CASES)
def test_conformance_case_round_trips(case):
    comp = case.build()
    loaded = _roundtrip(comp)
    assert isinstance(loaded, Computation)
    assert loaded.name == comp.name
    assert loaded.type_signature == comp.type_signature
    assert str(loaded.type_signature) == str(comp.type_signature)
    original = conformance._run(comp, case, fedcore.ReferenceExecutor)
    got = conformance._run(loaded, case, fedcore.ReferenceExecutor)
    if case.expect_error is not None:
        assert isinstance(original.error, case.expect_error), original
        assert isinstance(got.error, case.expect_error), got
        assert type(got.error) is type(original.error)
        return
    assert original.error is None and got.error is None, (original.error, got.error)
    conformance.assert_values_equal(got.value, original.value, rtol=case.rtol, atol=case.atol, strict=True)


@conformance.parametrize(cases=_COMPUTATION_CASES)
def test_conformance_case_round_trips_on_the_tensorflow_executor(case):
    comp = case.build()
    loaded = _roundtrip(comp)
    original = conformance._run(comp, case, TensorFlowExecutor)
    got = conformance._run(loaded, case, TensorFlowExecutor)
    if case.expect_error is not None:
        assert isinstance(original.error, case.expect_error), original
        assert isinstance(got.error, case.expect_error), got
        return
    assert original.error is None and got.error is None, (original.error, got.error)
    conformance.assert_values_equal(got.value, original.value, rtol=case.rtol, atol=case.atol, strict=True)


_POLYMORPHIC_CASES = [c for c in conformance.CASES if c not in _COMPUTATION_CASES]


def _specialize(poly, case):
    """The computation a polymorphic case's call specializes to (as its ``__call__`` does)."""
    from fedcore.compiler import computation
    from fedcore.runtime.values import infer_type

    args, kwargs = case.arguments()
    computation._check_binds(poly._fn, poly.name, args, kwargs)
    names = computation._python_parameter_names(poly._fn)
    parameter_type, packed = computation._packed_type(
        [infer_type(a) for a in args], [(k, infer_type(v)) for k, v in kwargs.items()], names,
        computation._has_varargs(poly._fn),
    )
    return poly._fedcore_specialize(parameter_type, packed)


@conformance.parametrize(cases=_POLYMORPHIC_CASES)
def test_polymorphic_case_specialization_round_trips(case):
    poly = case.build()
    original = conformance._run(poly, case, fedcore.ReferenceExecutor)
    if case.expect_error is not None:
        # These fail before any computation exists: there is nothing to serialize.
        assert isinstance(original.error, case.expect_error)
        with pytest.raises(case.expect_error):
            _specialize(poly, case)
        return
    loaded = _roundtrip(_specialize(poly, case))
    got = conformance._run(loaded, case, fedcore.ReferenceExecutor)
    assert original.error is None and got.error is None, (original.error, got.error)
    conformance.assert_values_equal(got.value, original.value, rtol=case.rtol, atol=case.atol, strict=True)


def test_reserializing_a_loaded_computation_gives_a_working_copy():
    comp = conformance.get_case(_COMPUTATION_CASES[0].name).build()
    loaded = _roundtrip(_roundtrip(comp))
    case = _COMPUTATION_CASES[0]
    conformance.assert_values_equal(
        conformance._run(loaded, case, fedcore.ReferenceExecutor).value,
        conformance._run(comp, case, fedcore.ReferenceExecutor).value,
    )


@fedcore.tf_computation(fedcore.TensorType(tf.float32), fedcore.TensorType(tf.float32))
def _scaled_add(a, b):
    return collections.OrderedDict(total=a + b, scaled=2.0 * a)


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32), fedcore.type_at_server(tf.float32))
def _fed(xs, s):
    return fedcore.federated_sum(fedcore.federated_map(_scaled_add, fedcore.federated_zip([xs, fedcore.federated_broadcast(s)])))


def test_containers_and_keyword_parameters_survive():
    loaded = _roundtrip(_fed)
    assert loaded._parameter_names == _fed._parameter_names
    expected = _fed(xs=[1.0, 2.0], s=3.0)
    got = loaded(xs=[1.0, 2.0], s=3.0)
    assert isinstance(got, collections.OrderedDict)
    conformance.assert_values_equal(got, expected)
    tf_loaded = _roundtrip(_scaled_add)
    assert isinstance(tf_loaded.ir.function, serialization.ImportedTFFunction)
    conformance.assert_values_equal(tf_loaded(1.0, 2.0), _scaled_add(1.0, 2.0))


def test_loaded_tf_computation_runs_on_the_tensorflow_executor():
    loaded = _roundtrip(_fed)
    with fedcore.execution_context(TensorFlowExecutor()):
        got = loaded([1.0, 2.0, 4.0], 0.5)
    conformance.assert_values_equal(got, _fed([1.0, 2.0, 4.0], 0.5))


def test_loaded_tf_computation_can_be_called_from_tf_code():
    loaded = _roundtrip(_scaled_add)

    @fedcore.tf_computation(tf.float32)
    def outer(x):
        return loaded(x, x)["total"] + 1.0

    assert float(outer(2.0)) == 5.0


def _pickle_opcodes_free(data: bytes) -> bool:
    """No pickle stream at the start (protocol 2+ pickles begin with PROTO, 0x80) and no Python class refs."""
    return not data.startswith(b"\x80") and b"c__builtin__" not in data and b"cbuiltins" not in data


def test_the_format_is_data_only_and_loads_without_pickle(monkeypatch):
    data = serialize(_fed)
    assert data.startswith(serialization.MAGIC)
    assert _pickle_opcodes_free(data)
    header_len = int.from_bytes(data[len(serialization.MAGIC):len(serialization.MAGIC) + 8], "big")
    start = len(serialization.MAGIC) + 8
    header = json.loads(data[start:start + header_len])
    assert header["format"] == "fedcore.computation" and header["version"] == serialization.VERSION
    assert header["type_signature"] == str(_fed.type_signature)
    assert header["name"] == _fed.name
    assert [f["name"] for f in header["functions"]] == ["_scaled_add"]
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(data[start + header_len:-32])
    assert len(graph.node) > 0
    with pytest.raises(Exception):
        pickletools.dis(data)

    def no_pickle(*args, **kwargs):
        raise AssertionError("deserialize must not unpickle")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    assert deserialize(data)([1.0], 1.0) == _fed([1.0], 1.0)


# --------------------------------------------------------------------------
# Malformed files.


def _rewrite_header(data: bytes, change) -> bytes:
    magic = serialization.MAGIC
    header_len = int.from_bytes(data[len(magic):len(magic) + 8], "big")
    start = len(magic) + 8
    header = json.loads(data[start:start + header_len])
    change(header)
    payload = data[start + header_len:-32]
    functions = header.pop("functions")
    sections = [payload[f["offset"]:f["offset"] + f["length"]] for f in functions]
    return serialization._pack({**header, "functions": functions}, sections)


@pytest.fixture(scope="module")
def data():
    return serialize(_fed)


def test_tampered_bytes_are_detected(data):
    for position in (30, len(data) // 2, len(data) - 40, len(data) - 1):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(SerializationError, match="tampered|corrupted"):
            deserialize(bytes(tampered))


def test_truncated_files_are_detected(data):
    for n in (0, 5, len(serialization.MAGIC), 40, len(data) // 2, len(data) - 1):
        with pytest.raises(SerializationError, match="truncated|corrupted|tampered"):
            deserialize(data[:n])


def test_wrong_version_and_format(data):
    with pytest.raises(SerializationError, match="version 99"):
        deserialize(_rewrite_header(data, lambda h: h.update(version=99)))
    with pytest.raises(SerializationError, match="not a fedcore computation file"):
        deserialize(_rewrite_header(data, lambda h: h.update(format="something.else")))


def test_not_a_fedcore_file():
    for junk in (b"PK\x03\x04 a zip file", pickle.dumps({"a": 1}), b"", b"\x00" * 100):
        with pytest.raises(SerializationError):
            deserialize(junk)
    with pytest.raises(SerializationError, match="expects bytes"):
        deserialize("FEDCORE-COMPUTATION\n")


def test_consistent_but_malformed_content_gives_a_clear_error(data):
    def drop_ir(h):
        del h["ir"]

    def wrong_signature(h):
        h["type_signature"] = "( -> int32)"

    def bad_graph_hash(h):
        h["functions"][0]["sha256"] = "0" * 64

    def bad_node(h):
        h["ir"] = {"k": "Nonsense"}

    for change, pattern in (
        (drop_ir, "corrupted"),
        (wrong_signature, "the header says"),
        (bad_graph_hash, "checksum"),
        (bad_node, "unknown IR node kind"),
    ):
        with pytest.raises(SerializationError, match=pattern):
            deserialize(_rewrite_header(data, change))


def test_python_ops_are_refused():
    @fedcore.tf_computation(tf.float32)
    def calls_python(x):
        return tf.py_function(lambda v: v + 1.0, [x], tf.float32)

    with pytest.raises(SerializationError, match="calls_python.*calls Python"):
        serialize(calls_python)


def test_variable_writing_computations_are_refused():
    counter = tf.Variable(0.0)

    @fedcore.tf_computation(tf.float32)
    def bump(x):
        counter.assign_add(x)
        return counter.read_value()

    with pytest.raises(SerializationError, match="bump assigns tf.Variables"):
        serialize(bump)


def test_pure_computation_reading_a_variable_is_frozen():
    weight = tf.Variable(3.0)

    @fedcore.tf_computation(tf.float32)
    def times_weight(x):
        return x * weight

    loaded = _roundtrip(times_weight)
    weight.assign(100.0)  # the file holds the value at serialization time
    assert float(loaded(2.0)) == 6.0


def test_polymorphic_and_non_computations_are_refused():
    @fedcore.tf_computation
    def poly(x):
        return x

    with pytest.raises(SerializationError, match="polymorphic"):
        serialize(poly)
    with pytest.raises(SerializationError, match="expects a fedcore Computation"):
        serialize(lambda x: x)


# --------------------------------------------------------------------------
# Federated averaging with a Keras model.


def test_federated_averaging_next_round_trips_on_both_executors():
    import keras

    from fedcore import learning
    from tests.learning.helpers import INPUT_SPEC, random_batches

    def model_fn():
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
        return learning.from_keras_model(model, keras.losses.SparseCategoricalCrossentropy(), INPUT_SPEC)

    process = learning.build_federated_averaging_process(
        model_fn, client_optimizer_fn=lambda: learning.optimizers.SGD(learning_rate=0.1)
    )
    next_loaded = _roundtrip(process.next)
    assert next_loaded.type_signature == process.next.type_signature
    state = process.initialize()
    data = [random_batches(20, seed=0), random_batches(10, seed=1)]
    expected = process.next(state, data)
    for executor in (fedcore.ReferenceExecutor(), TensorFlowExecutor()):
        with fedcore.execution_context(executor):
            got = next_loaded(state, data)
        conformance.assert_values_equal(got, expected, rtol=1e-5, atol=1e-6)
    assert isinstance(got[0], learning.ServerState)
    assert not np.allclose(got[0].model.trainable["dense/kernel"], 0.0)

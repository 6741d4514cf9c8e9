"""A sweep of bad inputs: every public entry point, fed malformed input, must fail clearly.

Each case is a function that must raise.  It passes when the exception is of
the expected kind (by default a TypeError or ValueError subclass, such as
``ArgumentError``, ``FederatedTypeError`` or ``SerializationError``), is not
an internal error (AttributeError, KeyError, IndexError, RecursionError, ...)
unless the API documents it, names what was wrong in its message, and comes
within a deadline: a case that hangs fails.

The hypothesis tests at the end fuzz the type parser with random text and
with mutations of valid type strings.  docs/reliability.md lists the case
counts per category; ``test_docs_count_the_cases`` keeps them in step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import json
import re
import signal
import struct
import traceback
from pathlib import Path
from typing import Any, Callable, List, Tuple

import attrs
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedcore
from fedcore import learning, simulation
from fedcore.cli import main as cli_main
from fedcore.compiler import serialization
from fedcore.compiler.serialization import SerializationError
from fedcore.simulation import ClientData
from fedcore.types import DTYPE_NAMES, FederatedType, FunctionType, SequenceType, StructType, TensorType, parse, to_type

# Errors that come from fedcore's internals rather than from a check of the input.
INTERNAL = (AttributeError, KeyError, IndexError, RecursionError, NotImplementedError, AssertionError, UnboundLocalError)
CLEAR = (TypeError, ValueError)
DEADLINE_S = 60
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


@attrs.frozen
class Case:
    category: str
    name: str
    fn: Callable[[], Any]
    names: Tuple[str, ...]  # what the message must mention
    expect: Tuple[type, ...]


CASES: List[Case] = []


def case(category: str, name: str, fn: Callable[[], Any], *names: str, expect: Tuple[type, ...] = CLEAR) -> None:
    CASES.append(Case(category, name, fn, tuple(names), expect))


class Hang(BaseException):
    """Raised by the deadline timer; a BaseException so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def deadline(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------
# Type strings: fedcore.to_type and the parser.

TYPE_STRINGS = "type strings"

for text, names in [
    ("", ["''", "unexpected end of input"]),
    ("   ", ["unexpected end of input"]),
    ("float32[", ["'float32['", "column 9"]),
    ("float32[?,784", ["'float32[?,784'", "expected ',', ']'"]),
    ("float32]", ["unexpected ']'"]),
    ("<a=int32", ["'<a=int32'"]),
    ("int32>", ["unexpected '>'"]),
    ("{int32@CLIENTS", ["expected '}'"]),
    ("int32}@CLIENTS", ["unexpected '}'"]),
    ("(int32 -> float32", ["'(int32 -> float32'"]),
    ("int32 -> float32", ["unexpected '->'"]),
    ("(->)", ["unexpected ')'"]),
    ("<<int32>", ["'<<int32>'"]),
    ("float33", ["unknown dtype 'float33'"]),
    ("Float32[2]", ["unexpected '['"]),
    ("t", ["unknown dtype 't'"]),
    ("int32[-1]", ["unexpected character '-'"]),
    ("int32[1.5]", ["unexpected character '.'"]),
    ("int32[a]", ["unexpected 'a'"]),
    ("int32[]", ["unexpected ']'"]),
    ("int32[*,2]", ["unexpected ','"]),
    ("int32[99999999999999999999]", ["99999999999999999999", "int64"]),
    ("int32@EDGE", ["unknown placement 'EDGE'"]),
    ("int32@", ["'int32@'", "expected a placement"]),
    ("@SERVER", ["unexpected '@'"]),
    ("{int32}@SERVER@CLIENTS", ["unexpected '@'"]),
    ("<a=int32,a=bool>", ["duplicate struct element name 'a'"]),
    ("<a=>", ["'<a=>'"]),
    ("<=int32>", ["unexpected '='"]),
    ("{int32@SERVER}@CLIENTS", ["int32@SERVER", "federated"]),
    ("{(int32 -> int32)}@CLIENTS", ["(int32 -> int32)"]),
    ("(int32 -> float32)*", ["(int32 -> float32)", "sequence"]),
    ("placement*", ["placement", "sequence"]),
    ("{int32*}@CLIENTS*", ["unexpected '*'"]),
    ("int32 int32", ["unexpected 'int32'"]),
    ("é", ["unexpected character 'é'"]),
    ("int32\x00", ["unexpected character '\\x00'"]),
    ("\u202e<int32>", ["unexpected character '\\u202e'"]),
    ("int32[١]", ["unexpected character '١'"]),
    ("<" * 150 + "int32" + ">" * 150, ["nests more than 100 levels"]),
    ("<" * 5000 + "int32" + ">" * 5000, ["nests more than 100 levels", "10005 characters"]),
    ("int32" + "*" * 3000, ["nests more than 100 levels"]),
    ("(int32 -> " * 400 + "int32" + ")" * 400, ["nests more than 100 levels"]),
    ("<" * 3000, ["unexpected end of input", "column 3001"]),
]:
    label = repr(text) if len(text) <= 30 else f"{text[:20]!r}... ({len(text)} characters)"
    case(TYPE_STRINGS, f"parse {label}", functools.partial(parse, text), *names)
    case(TYPE_STRINGS, f"to_type {label}", functools.partial(fedcore.to_type, text), *names)

for value, names in [
    (None, ["None"]),
    (3, ["got 3"]),
    (3.5, ["3.5"]),
    (b"int32", ["b'int32'"]),
    (object(), ["object"]),
    (np.zeros(3), ["array"]),
    (tf.constant(1.0), ["tf.Tensor"]),
    ({"a"}, ["{'a'}"]),
]:
    case(TYPE_STRINGS, f"parse non-string {type(value).__name__}", functools.partial(parse, value), "expects a string", *names)

# --------------------------------------------------------------------------
# Other type specs given to to_type and the type constructors.

SPECS = "type specs"


def _nested_list(depth: int, leaf: Any = "int32") -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _nested_dict(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = {"a": value}
    return value


for name, spec, names in [
    ("None", None, ["None"]),
    ("number", 3, ["3", "int"]),
    ("float", 3.5, ["3.5"]),
    ("bytes", b"int32", ["b'int32'"]),
    ("object", object(), ["object"]),
    ("array", np.zeros(3), ["ndarray"]),
    ("tensor", tf.constant(1.0), ["EagerTensor"]),
    ("set", {1, 2}, ["set"]),
    ("function", len, ["len"]),
    ("None in a list", [tf.int32, None], ["None"]),
    ("int dict key", {1: "int32"}, ["dict keys", "1"]),
    ("bad element name", {"a b": "int32"}, ["'a b'"]),
    ("negative dim", ("int32", [-1]), ["-1"]),
    ("fractional dim", ("int32", [1.5]), ["1.5"]),
    ("unknown dtype name", ("float33", [2]), ["float33"]),
    ("tf.resource", tf.resource, ["resource"]),
    ("tf.variant", tf.variant, ["variant"]),
    ("datetime dtype", np.dtype("datetime64[s]"), ["M8"]),
    ("void dtype", np.dtype("V8"), ["V8"]),
    ("huge dim", ("int32", [2**64]), [str(2**64), "int64"]),
    ("deeply nested list", _nested_list(5000), ["nested", "recursion limit"]),
]:
    case(SPECS, f"to_type {name}", functools.partial(to_type, spec), *names)

case(SPECS, "TensorType bad shape", lambda: TensorType("float32", "abc"), "'a'")
case(SPECS, "TensorType bool dim", lambda: TensorType("float32", [True]), "True")
case(SPECS, "TensorType dtype None", lambda: TensorType(None), "None")
case(SPECS, "StructType not a sequence", lambda: StructType(3), "3")
case(SPECS, "StructType bad element", lambda: StructType([("a", "int32", "x")]), "('a', 'int32', 'x')")
case(SPECS, "FederatedType bad placement", lambda: FederatedType("int32", "EDGE"), "'EDGE'")
case(SPECS, "FederatedType all_equal not bool", lambda: FederatedType("int32", "SERVER", all_equal="yes"), "'yes'")
case(SPECS, "SequenceType federated", lambda: SequenceType(fedcore.type_at_clients("int32")), "{int32}@CLIENTS")
case(SPECS, "type_at_server function", lambda: fedcore.type_at_server("(int32 -> int32)"), "(int32 -> int32)")
case(SPECS, "AbstractType lower case", lambda: fedcore.AbstractType("t"), "'t'")

# --------------------------------------------------------------------------
# Computations called with wrong arguments.

CALLS = "computation arguments"


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def client_mean(readings):
    return fedcore.federated_mean(readings)


@fedcore.tf_computation(tf.int32, (tf.float32, [3]))
def scale(a, b):
    return tf.cast(a, tf.float32) * b


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32), fedcore.type_at_clients(tf.float32))
def two_client_sums(a, b):
    return fedcore.federated_sum(a), fedcore.federated_sum(b)


@fedcore.federated_computation(fedcore.type_at_server(collections.OrderedDict(w=tf.float32, b=tf.int32)))
def server_struct(model):
    return model


@fedcore.federated_computation
def no_parameter():
    return fedcore.federated_value(1, fedcore.SERVER)


@fedcore.tf_computation
def polymorphic_double(x):
    return x * 2


def _tf_executor():
    from fedcore.runtime.tensorflow import TensorFlowExecutor

    return TensorFlowExecutor()


def on_tf(fn, *args, **kwargs):
    with fedcore.execution_context(_tf_executor()):
        return fn(*args, **kwargs)


for run_name, run in (("", lambda fn, *a, **k: fn(*a, **k)), (" (TF executor)", on_tf)):
    for name, call, names in [
        ("scalar for clients", lambda r: r(client_mean, 3.0), ["{float32}@CLIENTS", "3.0"]),
        ("string for clients", lambda r: r(client_mean, "abc"), ["{float32}@CLIENTS", "'abc'"]),
        ("dict for clients", lambda r: r(client_mean, {"a": 1.0}), ["{float32}@CLIENTS", "{'a': 1.0}"]),
        ("dataset for clients", lambda r: r(client_mean, tf.data.Dataset.range(3)), ["{float32}@CLIENTS", "Dataset"]),
        ("string member", lambda r: r(client_mean, ["a", 1.0]), ["client 0", "float32", "'a'"]),
        ("None member", lambda r: r(client_mean, [1.0, None]), ["client 1", "float32", "None"]),
        ("object member", lambda r: r(client_mean, [object()]), ["client 0", "object"]),
        ("vector member", lambda r: r(client_mean, [[1.0], [1.0, 2.0]]), ["client 0", "float32", "shape [1]"]),
        ("complex member", lambda r: r(client_mean, [1j]), ["client 0", "complex", "1j"]),
        ("overflowing int", lambda r: r(client_mean, [2**200]), ["client 0", str(2**200)[:40], "does not fit in float32"]),
        ("no arguments", lambda r: r(client_mean), ["{float32}@CLIENTS", "got none"]),
        ("two arguments for one", lambda r: r(client_mean, [1.0], [2.0]), ["one argument", "got 2"]),
        ("keyword for one parameter", lambda r: r(client_mean, values=[1.0]), ["{float32}@CLIENTS", "['values']"]),
        ("deeply nested list", lambda r: r(scale, 1, _nested_list(5000)), ["<a=int32,b=float32[3]>", "nested too deeply"]),
        ("polymorphic deeply nested list", lambda r: r(polymorphic_double, _nested_list(5000)), ["nested this deeply"]),
        ("polymorphic deeply nested dict", lambda r: r(polymorphic_double, _nested_dict(3000)), ["nested this deeply"]),
        ("missing argument", lambda r: r(scale, 1), ["2 arguments", "<a=int32,b=float32[3]>", "got 1"]),
        ("extra argument", lambda r: r(scale, 1, [1.0, 2.0, 3.0], 4), ["2 arguments", "got 3"]),
        ("duplicate keyword", lambda r: r(scale, 1, a=2), ["two values for argument 'a'"]),
        ("wrong keyword", lambda r: r(scale, 1, c=[1.0, 2.0, 3.0]), ["unexpected keyword", "'c'"]),
        ("wrong shape", lambda r: r(scale, 1, [1.0, 2.0]), ["float32[3]", "shape [2]"]),
        ("ragged list", lambda r: r(scale, 1, [[1.0], [2.0, 3.0]]), ["float32[3]", "rectangular"]),
        ("fraction for int", lambda r: r(scale, 1.5, [1.0, 2.0, 3.0]), ["int32", "1.5", "fractional"]),
        ("bool for int", lambda r: r(scale, True, [1.0, 2.0, 3.0]), ["int32", "True"]),
        ("float64 array of wrong shape", lambda r: r(scale, 1, np.zeros((3, 1))), ["float32[3]", "shape [3,1]"]),
        ("function as tensor", lambda r: r(scale, len, [1.0, 2.0, 3.0]), ["int32", "len"]),
        ("clients disagree", lambda r: r(two_client_sums, [1.0], [1.0, 2.0]), ["number of clients", "[1, 2]"]),
        ("struct missing field", lambda r: r(server_struct, {"w": 1.0}), ["<w=float32,b=int32>", "got 1"]),
        ("struct wrong field", lambda r: r(server_struct, {"w": 1.0, "c": 2}), ["<w=float32,b=int32>", "['b']"]),
        ("struct for list", lambda r: r(server_struct, 3), ["<w=float32,b=int32>", "3"]),
        ("argument for no parameter", lambda r: r(no_parameter, 1), ["no_parameter takes no arguments"]),
        ("polymorphic object", lambda r: r(polymorphic_double, object()), ["cannot infer", "object"]),
        ("polymorphic None", lambda r: r(polymorphic_double, None), ["cannot infer", "None"]),
        ("polymorphic int dict keys", lambda r: r(polymorphic_double, {1: 2}), ["cannot infer", "{1: 2}"]),
    ]:
        case(CALLS, name + run_name, functools.partial(call, run), *names)

case(CALLS, "set_default_executor non-executor", lambda: fedcore.set_default_executor(3), "execute()", "3")
case(CALLS, "execution_context non-executor", lambda: fedcore.execution_context("ref").__enter__(), "execute()", "'ref'")

# --------------------------------------------------------------------------
# Datasets whose element specs do not match.

DATASETS = "dataset specs"

BATCH = collections.OrderedDict(x=tf.TensorSpec([None, 4], tf.float32), y=tf.TensorSpec([None], tf.int32))


@fedcore.tf_computation(tf.data.DatasetSpec(tf.TensorSpec([None, 2], tf.float32)))
def column_sums(dataset):
    return dataset.reduce(tf.zeros([2]), lambda total, batch: total + tf.reduce_sum(batch, 0))


@fedcore.federated_computation(fedcore.type_at_clients(column_sums.type_signature.parameter))
def federated_column_sums(datasets):
    return fedcore.federated_sum(fedcore.federated_map(column_sums, datasets))


def _rows(n: int, width: int, dtype=np.float32) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(np.zeros((n, width), dtype)).batch(2)


def _batches(width: int = 4, dtype=np.float32, label_dtype=np.int32, key: str = "x", batched: bool = True):
    data = collections.OrderedDict([(key, np.zeros((6, width), dtype)), ("y", np.zeros(6, label_dtype))])
    dataset = tf.data.Dataset.from_tensor_slices(data)
    return dataset.batch(3) if batched else dataset


for run_name, run in (("", lambda fn, *a: fn(*a)), (" (TF executor)", on_tf)):
    for name, call, names in [
        ("wrong width", lambda r: r(federated_column_sums, [_rows(4, 3)]), ["float32[?,2]*", "float32[?,3]*", "client 0"]),
        ("wrong dtype", lambda r: r(federated_column_sums, [_rows(4, 2), _rows(4, 2, np.float64)]), ["client 1", "float64[?,2]*"]),
        ("int dataset", lambda r: r(federated_column_sums, [tf.data.Dataset.range(3)]), ["float32[?,2]*", "int64*"]),
        ("unbatched", lambda r: r(federated_column_sums, [_rows(4, 2).unbatch()]), ["float32[?,2]*", "float32[2]*"]),
        ("dict elements", lambda r: r(federated_column_sums, [tf.data.Dataset.from_tensor_slices({"x": np.zeros((2, 2), np.float32)})]), ["<x=float32[2]>*"]),
        ("tensor for dataset", lambda r: r(federated_column_sums, [3.0]), ["float32[?,2]*", "3.0"]),
        ("one dataset for clients", lambda r: r(federated_column_sums, _rows(4, 2)), ["{float32[?,2]*}@CLIENTS", "a list with one value per client"]),
        ("ragged list elements", lambda r: r(federated_column_sums, [[[[1.0, 2.0]], [[1.0, 2.0, 3.0]]]]), ["float32[?,2]", "shape [1,3]"]),
        ("dataset for tensor", lambda r: r(scale, 1, tf.data.Dataset.range(3)), ["float32[3]", "Dataset"]),
    ]:
        case(DATASETS, name + run_name, functools.partial(call, run), *names)


def _keras_model():
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])


def _model_fn():
    import keras

    return learning.from_keras_model(_keras_model(), keras.losses.SparseCategoricalCrossentropy(), BATCH)


@functools.lru_cache(maxsize=None)
def _fedavg():
    process = learning.build_federated_averaging_process(_model_fn)
    return process, process.initialize()


@functools.lru_cache(maxsize=None)
def _evaluation():
    return learning.build_federated_evaluation(_model_fn)


def _next(data):
    process, state = _fedavg()
    return process.next(state, data)


EXPECTED_BATCH = "<x=float32[?,4],y=int32[?]>*"
for name, data, names in [
    ("fedavg wrong width", lambda: [_batches(width=5)], [EXPECTED_BATCH, "<x=float32[?,5],y=int32[?]>*"]),
    ("fedavg wrong dtype", lambda: [_batches(dtype=np.float64)], [EXPECTED_BATCH, "float64[?,4]"]),
    ("fedavg wrong label dtype", lambda: [_batches(label_dtype=np.float32)], [EXPECTED_BATCH, "y=float32[?]"]),
    ("fedavg wrong key", lambda: [_batches(key="z")], [EXPECTED_BATCH, "<z=float32[?,4]"]),
    ("fedavg unbatched", lambda: [_batches(batched=False)], [EXPECTED_BATCH, "<x=float32[4],y=int32>*"]),
    ("fedavg second client wrong", lambda: [_batches(), _batches(width=2)], ["client 1", "float32[?,2]"]),
    ("fedavg one dataset", lambda: _batches(), ["a list with one value per client"]),
    ("fedavg number", lambda: 3, ["a list with one value per client", "got 3"]),
]:
    case(DATASETS, name, functools.partial(lambda d: _next(d()), data), *names)

case(DATASETS, "fedavg state None", lambda: _fedavg()[0].next(None, [_batches()]), "optimizer_state", "None")
case(DATASETS, "fedavg state garbage", lambda: _fedavg()[0].next({"a": 1}, [_batches()]), "2 elements", "{'a': 1}")
case(DATASETS, "fedavg data missing", lambda: _fedavg()[0].next(_fedavg()[1]), "2 arguments", "got 1")
case(
    DATASETS,
    "evaluation wrong data",
    lambda: _evaluation()(_fedavg()[1].model, [_batches(width=7)]),
    EXPECTED_BATCH,
    "float32[?,7]",
)
case(DATASETS, "evaluation wrong weights", lambda: _evaluation()({"trainable": 1}, [_batches()]), "trainable=", "{'trainable': 1}")


def _client_data():
    return ClientData.from_tensor_slices(
        {"a": {"x": np.zeros((4, 3), np.float32)}, "b": {"x": np.ones((2, 3), np.float32)}}
    )


case(
    DATASETS,
    "make_federated_data into wrong computation",
    lambda: federated_column_sums(simulation.make_federated_data(_client_data(), ["a", "b"])),
    "float32[?,2]*",
    "<x=float32[3]>*",
)
case(
    DATASETS,
    "make_federated_data preprocessed into fedavg",
    lambda: _next(simulation.make_federated_data(_client_data(), ["a"], preprocess=lambda d: d.batch(2))),
    EXPECTED_BATCH,
    "<x=float32[?,3]>*",
)
case(
    DATASETS,
    "check_data_matches_model",
    lambda: __import__("fedcore.cli").cli.check_data_matches_model("<x=float32[?,10],y=int32[?,1]>", BATCH),
    "<x=float32[?,4],y=int32[?]>",
    "<x=float32[?,10],y=int32[?,1]>",
)
case(
    DATASETS,
    "from_tensor_slices dtype mismatch",
    lambda: ClientData.from_tensor_slices(
        {"a": {"x": np.zeros((4, 3), np.float32)}, "b": {"x": np.zeros((4, 3), np.float64)}}
    ),
    "'x' is float32[3] for client 'a' but float64[3] for client 'b'",
)
case(
    DATASETS,
    "from_tensor_slices structure mismatch",
    lambda: ClientData.from_tensor_slices({"a": {"x": np.zeros((4, 3))}, "b": {"y": np.zeros((4, 3))}}),
    "client 'a'",
    "client 'b'",
    "'y'",
)
case(
    DATASETS,
    "from_tensor_slices shape mismatch",
    lambda: ClientData.from_tensor_slices({"a": np.zeros((4, 3)), "b": np.zeros((4, 2))}),
    "float64[3]",
    "float64[2]",
)
case(
    DATASETS,
    "from_tensor_slices example counts differ",
    lambda: ClientData.from_tensor_slices({"a": {"x": np.zeros((4, 3)), "y": np.zeros(3)}}),
    "client 'a'",
    "'x' has 4",
    "'y' has 3",
)
case(
    DATASETS,
    "from_tensor_slices ragged",
    lambda: ClientData.from_tensor_slices({"a": [[1.0], [1.0, 2.0]]}),
    "client 'a'",
)
case(DATASETS, "from_tensor_slices scalar", lambda: ClientData.from_tensor_slices({"a": 3.0}), "client 'a'", "scalar")
case(DATASETS, "from_tensor_slices objects", lambda: ClientData.from_tensor_slices({"a": {"x": [object()]}}), "client 'a'", "'x'")
case(DATASETS, "element_spec not a spec", lambda: ClientData(["a"], lambda c: None, element_spec=3).element_type_structure, "3")

# --------------------------------------------------------------------------
# ClientData, sampling and the data sets.

CLIENT_DATA = "ClientData and sampling"

# An unknown client id is a KeyError by design (docs/simulation.md), naming the id and some that exist.
case(CLIENT_DATA, "unknown client id", lambda: _client_data().create_tf_dataset_for_client("zz"), "'zz'", "'a'", expect=(KeyError,))
case(CLIENT_DATA, "make_federated_data unknown id", lambda: simulation.make_federated_data(_client_data(), ["a", "mallory"]), "'mallory'", expect=(KeyError,))
case(CLIENT_DATA, "subset unknown id", lambda: _client_data().subset(["zz"]), "'zz'", expect=(KeyError,))
case(CLIENT_DATA, "unhashable client id", lambda: _client_data().create_tf_dataset_for_client(["a"]), "['a']")
case(CLIENT_DATA, "int client id", lambda: _client_data().create_tf_dataset_for_client(3), "3", "int")
case(CLIENT_DATA, "make_federated_data ids None", lambda: simulation.make_federated_data(_client_data(), None), "client_ids", "None")
case(CLIENT_DATA, "make_federated_data ids int", lambda: simulation.make_federated_data(_client_data(), 5), "client_ids", "5")
case(CLIENT_DATA, "make_federated_data single string", lambda: simulation.make_federated_data(_client_data(), "a"), "single string", "'a'")
case(CLIENT_DATA, "make_federated_data not ClientData", lambda: simulation.make_federated_data({"a": 1}, ["a"]), "ClientData", "dict")
case(CLIENT_DATA, "make_federated_data preprocess not callable", lambda: simulation.make_federated_data(_client_data(), ["a"], preprocess=3), "preprocess", "3")
case(
    CLIENT_DATA,
    "preprocess returns non-dataset",
    lambda: simulation.make_federated_data(_client_data(), ["a"], preprocess=lambda d: 3),
    "returned int",
    "client 'a'",
)
case(CLIENT_DATA, "from_tensor_slices empty", lambda: ClientData.from_tensor_slices({}), "at least one client")
case(CLIENT_DATA, "from_tensor_slices list", lambda: ClientData.from_tensor_slices([1, 2]), "expects a dict", "list")
case(CLIENT_DATA, "from_tensor_slices int ids", lambda: ClientData.from_tensor_slices({1: np.zeros(3)}), "client ids must be strings", "1")
case(CLIENT_DATA, "from_tensor_slices None data", lambda: ClientData.from_tensor_slices({"a": None}), "client 'a'", "None")
case(CLIENT_DATA, "dataset_fn not callable", lambda: ClientData(["a"], 3), "dataset_fn", "3")
case(CLIENT_DATA, "client_ids a string", lambda: ClientData("abc", lambda c: None), "single string", "'abc'")
case(CLIENT_DATA, "duplicate client ids", lambda: ClientData(["a", "a"], lambda c: None), "unique", "'a'")
case(CLIENT_DATA, "dataset_fn returns non-dataset", lambda: ClientData(["a"], lambda c: 3).create_tf_dataset_for_client("a"), "returned int", "'a'")
case(CLIENT_DATA, "no clients element_spec", lambda: ClientData([], lambda c: None).element_spec, "no clients")
case(CLIENT_DATA, "datasets negative limit", lambda: list(_client_data().datasets(limit_count=-1)), "limit_count", "-1")
case(CLIENT_DATA, "datasets limit not int", lambda: list(_client_data().datasets(limit_count="2")), "limit_count", "'2'")
case(CLIENT_DATA, "split too many", lambda: simulation.train_test_client_split(_client_data(), 5), "num_test_clients=5", "2 clients")
case(CLIENT_DATA, "split float", lambda: simulation.train_test_client_split(_client_data(), 1.5), "num_test_clients", "1.5")
case(CLIENT_DATA, "sample zero", lambda: simulation.sample_clients(["a", "b"], 0, 0), "num_clients", "0")
case(CLIENT_DATA, "sample too many", lambda: simulation.sample_clients(["a", "b"], 5, 0), "5 clients", "only 2")
case(CLIENT_DATA, "sample negative round", lambda: simulation.sample_clients(["a", "b"], 1, -1), "round_num", "-1")
case(CLIENT_DATA, "sample float count", lambda: simulation.sample_clients(["a", "b"], 1.0, 0), "num_clients", "1.0")
case(CLIENT_DATA, "sample string seed", lambda: simulation.sample_clients(["a", "b"], 1, 0, "x"), "seed", "'x'")
case(CLIENT_DATA, "sampler ids int", lambda: simulation.ClientSampler(5, 1), "client_ids", "5")
case(CLIENT_DATA, "sample ids None", lambda: simulation.sample_clients(None, 1, 0), "client_ids", "None")
case(CLIENT_DATA, "digits zero clients", lambda: simulation.datasets.digits.load_data(num_clients=0), "num_clients=0")
case(CLIENT_DATA, "digits negative alpha", lambda: simulation.datasets.digits.load_data(num_clients=5, alpha=-1), "alpha", "-1")
case(CLIENT_DATA, "digits test fraction", lambda: simulation.datasets.digits.load_data(num_clients=5, test_fraction=1.5), "test_fraction", "1.5")
case(CLIENT_DATA, "emnist missing dir", lambda: simulation.datasets.emnist.load_data(path="/nonexistent/fedcore"), "/nonexistent/fedcore", expect=(OSError, ValueError))


def _garbage_emnist(tmp: Path) -> Path:
    for name in ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5"):
        (tmp / name).write_bytes(b"not an hdf5 file")
    return tmp


def _emnist_garbage_case():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        simulation.datasets.emnist.load_data(path=_garbage_emnist(Path(folder)))


case(CLIENT_DATA, "emnist corrupt file", _emnist_garbage_case, "fed_emnist_digitsonly_train.h5", "HDF5")

# --------------------------------------------------------------------------
# Truncated and tampered serialized computations.

SERIALIZED = "serialized computations"


@fedcore.tf_computation(tf.float32)
def add_half(x):
    return x + 0.5


@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
def sum_plus_half(xs):
    return fedcore.federated_sum(fedcore.federated_map(add_half, xs)), fedcore.federated_value(7, fedcore.SERVER)


@functools.lru_cache(maxsize=None)
def _saved() -> bytes:
    return fedcore.serialize(sum_plus_half)


def _rewritten(change: Callable[[dict], Any]) -> bytes:
    """The saved computation with its JSON header changed and a valid checksum: a careful tamperer."""
    header, payload = serialization._unpack(_saved())
    header = json.loads(json.dumps(header))
    change(header)
    return serialization._pack(header, [payload])


def _replace_in_header(old: str, new: str) -> Callable[[dict], Any]:
    def change(header):
        assert old in json.dumps(header), old
        text = json.dumps(header).replace(old, new)
        header.clear()
        header.update(json.loads(text))

    return change


def _truncated(n: int) -> bytes:
    data = _saved()
    return data[: n if n >= 0 else len(data) + n]


def _flipped(position: int) -> bytes:
    data = bytearray(_saved())
    data[position if position >= 0 else len(data) + position] ^= 0xFF
    return bytes(data)


for name, data, names in [
    ("empty", lambda: b"", ["truncated"]),
    ("inside the signature", lambda: _truncated(10), ["truncated", "signature"]),
    ("after the signature", lambda: _truncated(20), ["truncated", "20 bytes"]),
    ("inside the header", lambda: _truncated(200), ["truncated", "shorter than its header says"]),
    ("last byte cut", lambda: _truncated(-1), ["SHA-256"]),
    ("half the hash cut", lambda: _truncated(-16), ["SHA-256"]),
    ("flipped signature", lambda: _flipped(0), ["not a fedcore computation file"]),
    ("flipped header length", lambda: _flipped(22), ["truncated"]),
    ("flipped header byte", lambda: _flipped(60), ["SHA-256"]),
    ("flipped graph byte", lambda: _flipped(-40), ["SHA-256"]),
    ("huge header length", lambda: (lambda b: b + hashlib.sha256(b).digest())(serialization.MAGIC + struct.pack(">Q", 2**63) + b"{}"), ["header length is out of range"]),
    ("header not JSON", lambda: (lambda b: b + hashlib.sha256(b).digest())(serialization.MAGIC + struct.pack(">Q", 3) + b"{x}"), ["not valid JSON"]),
    ("header a list", lambda: (lambda b: b + hashlib.sha256(b).digest())(serialization.MAGIC + struct.pack(">Q", 2) + b"[]"), ["not a JSON object"]),
    ("a zip file", lambda: b"PK\x03\x04 a zip file", ["not a fedcore computation file"]),
    ("other version", lambda: _rewritten(lambda h: h.update(version=2)), ["version 2"]),
    ("other format", lambda: _rewritten(lambda h: h.update(format="x")), ["format 'x'"]),
    ("no IR", lambda: _rewritten(lambda h: h.pop("ir")), ["corrupted", "'ir'"]),
    ("IR a list", lambda: _rewritten(lambda h: h.update(ir=[])), ["corrupted"]),
    ("unknown node kind", lambda: _rewritten(lambda h: h["ir"].update(k="Bogus")), ["unknown IR node kind 'Bogus'"]),
    ("bad type string", lambda: _rewritten(lambda h: h["ir"].update(parameter_type={"t": "<<<"})), ["corrupted", "'<<<'"]),
    ("deeply nested type string", lambda: _rewritten(lambda h: h["ir"].update(parameter_type={"t": "<" * 3000 + ">" * 3000})), ["corrupted", "nests more than 100 levels"]),
    ("signature disagrees", lambda: _rewritten(lambda h: h.update(type_signature="( -> int32)")), ["the header says ( -> int32)"]),
    ("functions not a list", lambda: _rewritten(lambda h: h.update(functions=3)), ["corrupted"]),
    ("graph out of range", lambda: _rewritten(lambda h: h["functions"][0].update(offset=-5)), ["graph of add_half is out of range"]),
    ("graph checksum", lambda: _rewritten(lambda h: h["functions"][0].update(sha256="0" * 64)), ["graph of add_half fails its checksum"]),
    ("graph output renamed", lambda: _rewritten(lambda h: h["functions"][0].update(outputs=["nope:0"])), ["add_half", "nope:0"]),
    ("graph result type", lambda: _rewritten(lambda h: h["functions"][0].update(result_type={"t": "int32"})), ["add_half", "float32", "int32"]),
    ("graph parameter type", lambda: _rewritten(lambda h: h["functions"][0].update(parameter_type={"t": "int32"})), ["add_half", "float32", "int32"]),
    ("graph result arity", lambda: _rewritten(lambda h: h["functions"][0].update(result_type={"t": "<float32,float32>"})), ["add_half", "<float32,float32>"]),
    ("missing graph index", lambda: _rewritten(_replace_in_header('"function": 0', '"function": 7')), ["TF computation number 7"]),
    ("TF node type", lambda: _rewritten(_replace_in_header('"type": {"t": "(float32 -> float32)"}', '"type": {"t": "(int32 -> int32)"}')), ["(int32 -> int32)", "add_half"]),
    ("unknown intrinsic", lambda: _rewritten(_replace_in_header('"federated_sum"', '"federated_bogus"')), ["unknown intrinsic 'federated_bogus'"]),
    ("intrinsic at a wrong type", lambda: _rewritten(_replace_in_header('"federated_sum"', '"federated_broadcast"')), ["federated_broadcast", "{float32}@CLIENTS"]),
    ("literal of another dtype", lambda: _rewritten(_replace_in_header('"data": "BwAAAA==", "dtype": "<i4"', '"data": "BwAAAAAAAAA=", "dtype": "<i8"')), ["literal of type int32", "int64"]),
    ("literal of another shape", lambda: _rewritten(_replace_in_header('"dtype": "<i4", "kind": "ndarray", "shape": []', '"dtype": "<i4", "kind": "ndarray", "shape": [1]')), ["literal of type int32", "shape [1]"]),
    ("literal data cut", lambda: _rewritten(_replace_in_header('"data": "BwAAAA==", "dtype": "<i4"', '"data": "BwAA", "dtype": "<i4"')), ["corrupted"]),
    ("literal not base64", lambda: _rewritten(_replace_in_header('"data": "BwAAAA=="', '"data": "!!!"')), ["corrupted", "base64"]),
    ("literal object dtype", lambda: _rewritten(_replace_in_header('"dtype": "<i4"', '"dtype": "|O"')), ["literal dtype '|O'"]),
    ("unbound reference", lambda: _rewritten(_replace_in_header('"name": "xs"', '"name": "zz"')), ["'zz'", "nothing binds"]),
    ("reference at a wrong type", lambda: _rewritten(_replace_in_header('"name": "fc1", "type": {"t": "{float32}@CLIENTS"}', '"name": "fc1", "type": {"t": "float32@CLIENTS"}')), ["'fc1'", "float32@CLIENTS", "{float32}@CLIENTS"]),
    ("unknown container", lambda: _rewritten(lambda h: h["ir"].update(parameter_type={"t": "{<float32>}@CLIENTS", "c": {"c": "set", "e": [None]}})), ["unknown container 'set'"]),
    ("parameter names a number", lambda: _rewritten(lambda h: h.update(parameter_names=5)), ["corrupted"]),
    ("a string", lambda: "FEDCORE-COMPUTATION\n", ["expects bytes", "str"]),
    ("None", lambda: None, ["expects bytes", "NoneType"]),
]:
    case(SERIALIZED, name, functools.partial(lambda d: fedcore.deserialize(d()), data), *names, expect=(SerializationError,))

case(SERIALIZED, "serialize a number", lambda: fedcore.serialize(3), "int", expect=(SerializationError,))
case(SERIALIZED, "serialize polymorphic", lambda: fedcore.serialize(polymorphic_double), "polymorphic_double", "polymorphic", expect=(SerializationError,))

# --------------------------------------------------------------------------
# Bad command lines: argparse errors exit with status 2 and name the bad value.

CLI = "CLI arguments"


class CliExit(Exception):
    """The command line ended with a non-zero status: the status and what was written to stderr."""


def cli(*argv: str) -> int:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli_main(list(argv))
        except SystemExit as e:
            raise CliExit(f"exit {e.code}: {err.getvalue()}") from None
    if status != 0:
        raise CliExit(f"exit {status}: {err.getvalue()}")
    return status


for argv, names in [
    ((), ["exit 2", "COMMAND"]),
    (("bogus",), ["exit 2", "'bogus'"]),
    (("train", "--rounds", "0"), ["exit 2", "--rounds", "got 0"]),
    (("train", "--rounds", "abc"), ["exit 2", "--rounds", "'abc'"]),
    (("train", "--rounds", "-3"), ["exit 2", "--rounds", "-3"]),
    (("train", "--rounds", "1.5"), ["exit 2", "--rounds", "'1.5'"]),
    (("train", "--rounds"), ["exit 2", "--rounds", "expected one argument"]),
    (("train", "--model", "resnet"), ["exit 2", "--model", "'resnet'"]),
    (("train", "--executor", "gpu"), ["exit 2", "--executor", "'gpu'"]),
    (("train", "--client-lr", "nan"), ["exit 2", "--client-lr", "nan"]),
    (("train", "--client-lr", "inf"), ["exit 2", "--client-lr", "inf"]),
    (("train", "--client-lr", "-1"), ["exit 2", "--client-lr", "-1"]),
    (("train", "--server-lr", "x"), ["exit 2", "--server-lr", "'x'"]),
    (("train", "--emnist", "/nonexistent/fedcore"), ["exit 2", "--emnist", "/nonexistent/fedcore"]),
    (("train", "--num-clients", "0"), ["exit 2", "--num-clients", "got 0"]),
    (("train", "--num-clients", "100000"), ["exit 2", "--num-clients", "100000"]),
    (("train", "--clients-per-round", "50"), ["exit 2", "--clients-per-round", "50"]),
    (("train", "--eval-clients", "-1"), ["exit 2", "--eval-clients", "-1"]),
    (("train", "--seed", "-1"), ["exit 2", "--seed", "-1"]),
    (("train", "--seed", "99999999999999999999"), ["exit 2", "--seed", "99999999999999999999"]),
    (("train", "--batch-size", "0"), ["exit 2", "--batch-size", "got 0"]),
    (("train", "--epochs", "x"), ["exit 2", "--epochs", "'x'"]),
    (("train", "--unknown-flag"), ["exit 2", "--unknown-flag"]),
    (("signature",), ["exit 2", "MODULE:ATTR"]),
    (("signature", "nocolon"), ["exit 2", "'nocolon'"]),
    (("signature", ":attr"), ["exit 2", "':attr'"]),
    (("signature", "mod:"), ["exit 2", "'mod:'"]),
    (("signature", "no_such_module_xyz:f"), ["exit 2", "'no_such_module_xyz'"]),
    (("signature", "..:x"), ["exit 2", "'..'", "relative"]),
    (("signature", ".cli:main"), ["exit 2", "'.cli'"]),
    (("signature", "fedcore:no_such_attr"), ["exit 2", "'no_such_attr'"]),
    (("signature", "fedcore:__version__"), ["exit 2", "fedcore:__version__", "str"]),
    (("signature", "os.path:join"), ["exit 2", "os.path:join", "not a computation"]),
    (("signature", "\x00:x"), ["exit 2", "'\\x00'"]),
]:
    case(CLI, " ".join(argv) or "(nothing)", functools.partial(cli, *argv), *names, expect=(CliExit,))

# --------------------------------------------------------------------------
# Decorators misused, and intrinsics used wrongly outside and inside tracing.

DECORATORS = "decorators and intrinsics"


def _identity(x):
    return x


def _pair(x, y):
    return x


def _nothing():
    return 1


def _returns_none(x):
    return None


def _returns_object(x):
    return object()


for name, make, names in [
    ("federated unknown dtype", lambda: fedcore.federated_computation("float33")(_identity), ["_identity", "'float33'"]),
    ("federated unbalanced", lambda: fedcore.federated_computation("<int32")(_identity), ["_identity", "'<int32'"]),
    ("federated object type", lambda: fedcore.federated_computation(object())(_identity), ["_identity", "object"]),
    ("federated None type", lambda: fedcore.federated_computation(None)(_identity), ["_identity", "None"]),
    ("federated too many types", lambda: fedcore.federated_computation(tf.int32, tf.int32)(_identity), ["1 parameters", "2 types"]),
    ("federated not a function", lambda: fedcore.federated_computation(tf.int32)(3), ["decorates a function", "3"]),
    ("federated returns None", lambda: fedcore.federated_computation(tf.int32)(_returns_none), ["_returns_none", "returned None"]),
    ("federated returns object", lambda: fedcore.federated_computation(tf.int32)(_returns_object), ["object", "result of _returns_object"]),
    ("tf bad placement", lambda: fedcore.tf_computation("int32@EDGE")(_identity), ["'EDGE'"]),
    ("tf federated type", lambda: fedcore.tf_computation("int32@SERVER")(_identity), ["int32@SERVER"]),
    ("tf function type", lambda: fedcore.tf_computation("(int32 -> int32)")(_identity), ["(int32 -> int32)"]),
    ("tf abstract type", lambda: fedcore.tf_computation("T")(_identity), ["value of type T"]),
    ("tf too many types", lambda: fedcore.tf_computation(tf.int32, tf.int32, tf.int32)(_pair), ["2 parameters", "3 types"]),
    ("tf types for no parameters", lambda: fedcore.tf_computation(tf.int32)(_nothing), ["_nothing", "int32", "takes 0 positional arguments"]),
    ("tf number as type", lambda: fedcore.tf_computation(3)(_identity), ["_identity", "3"]),
    ("tf returns None", lambda: fedcore.tf_computation(tf.int32)(_returns_none), ["_returns_none", "returned None"]),
    ("tf returns object", lambda: fedcore.tf_computation(tf.int32)(_returns_object), ["_returns_object", "object"]),
]:
    case(DECORATORS, name, make, *names)


def _traced(body: Callable, *types: Any) -> Callable[[], Any]:
    return lambda: fedcore.federated_computation(*types)(body)


AT_CLIENTS = fedcore.type_at_clients(tf.float32)
AT_SERVER = fedcore.type_at_server(tf.float32)


@fedcore.tf_computation(tf.int32)
def int_identity(x):
    return x


def _mean(x):
    return fedcore.federated_mean(x)


def _sum(x):
    return fedcore.federated_sum(x)


def _broadcast(x):
    return fedcore.federated_broadcast(x)


def _value_at(placement):
    def body(x):
        return fedcore.federated_value(x, placement)

    return body


def _eval_at_none(x):
    return fedcore.federated_eval(_nothing, None)


def _map_number(x):
    return fedcore.federated_map(3, x)


def _map_int_fn(x):
    return fedcore.federated_map(int_identity, x)


def _zip_empty(x):
    return fedcore.federated_zip([])


def _zip(x, y):
    return fedcore.federated_zip([x, y])


def _weighted_mean(x, w):
    return fedcore.federated_mean(x, weight=w)


def _aggregate_object_zero(x):
    return fedcore.federated_aggregate(x, object(), None, None, None)


def _aggregate_no_functions(x):
    return fedcore.federated_aggregate(x, 0.0, None, None, None)


def _secure_sum(max_input):
    def body(x):
        return fedcore.federated_secure_sum(x, max_input)

    return body


def _sequence_sum(x):
    return fedcore.sequence_sum(x)


def _sequence_reduce(x):
    return fedcore.sequence_reduce(x, 0.0, _pair)


def _sequence_map_none(x):
    return fedcore.sequence_map(None, x)


def _apply(x):
    return fedcore.federated_apply(_identity, x)


def _arithmetic(x):
    return x + 1


def _attribute(x):
    return x.foo


def _missing_name(x):
    return x.b


def _index(x):
    return x[5]


def _iterate(x):
    return list(x)


def _truth(x):
    return 1 if x else 0


def _call_with_wrong_type(x):
    return client_mean(x)


def _intrinsic_in_tf(x):
    return fedcore.federated_sum(x)


def _federated_in_tf(x):
    return sum_plus_half(x)


def _tf_wrong_arity(x):
    return add_half(x, x)


for name, make, names in [
    ("mean at server", _traced(_mean, AT_SERVER), ["federated_mean", "float32@SERVER"]),
    ("mean of strings", _traced(_mean, fedcore.type_at_clients(tf.string)), ["federated_mean", "{string}@CLIENTS"]),
    ("sum unplaced", _traced(_sum, tf.float32), ["federated_sum", "float32"]),
    ("broadcast at clients", _traced(_broadcast, AT_CLIENTS), ["federated_broadcast", "{float32}@CLIENTS"]),
    ("value at unknown placement", _traced(_value_at("EDGE"), tf.float32), ["federated_value", "'EDGE'"]),
    ("value at a number", _traced(_value_at(3), tf.float32), ["federated_value", "3"]),
    ("value already placed", _traced(_value_at(fedcore.SERVER), AT_SERVER), ["federated_value", "float32@SERVER"]),
    ("eval at None", _traced(_eval_at_none, tf.float32), ["federated_eval", "None"]),
    ("map a number", _traced(_map_number, AT_CLIENTS), ["federated_map", "3"]),
    ("map a wrong function", _traced(_map_int_fn, AT_CLIENTS), ["federated_map", "(int32 -> int32)", "{float32}@CLIENTS"]),
    ("zip nothing", _traced(_zip_empty, AT_CLIENTS), ["federated_zip", "<>"]),
    ("zip mixed placements", _traced(_zip, AT_CLIENTS, AT_SERVER), ["federated_zip", "float32@SERVER"]),
    ("zip unplaced", _traced(_zip, tf.float32, tf.float32), ["federated_zip", "<float32,float32>"]),
    ("weight at server", _traced(_weighted_mean, AT_CLIENTS, AT_SERVER), ["federated_mean", "float32@SERVER"]),
    ("weight of strings", _traced(_weighted_mean, AT_CLIENTS, fedcore.type_at_clients(tf.string)), ["weight", "string"]),
    ("aggregate object zero", _traced(_aggregate_object_zero, AT_CLIENTS), ["federated_aggregate", "object"]),
    ("aggregate without functions", _traced(_aggregate_no_functions, AT_CLIENTS), ["federated_aggregate accumulate", "None"]),
    ("secure sum of floats", _traced(_secure_sum(10), AT_CLIENTS), ["federated_secure_sum", "float32"]),
    ("secure sum string bound", _traced(_secure_sum("x"), fedcore.type_at_clients(tf.int32)), ["federated_secure_sum", "string"]),
    ("sequence_sum of a tensor", _traced(_sequence_sum, tf.float32), ["sequence_sum", "float32"]),
    ("sequence_reduce of clients", _traced(_sequence_reduce, fedcore.type_at_clients(SequenceType(tf.float32))), ["sequence_reduce", "{float32*}@CLIENTS"]),
    ("sequence_map of None", _traced(_sequence_map_none, SequenceType(tf.float32)), ["sequence_map", "None"]),
    ("apply at clients", _traced(_apply, AT_CLIENTS), ["federated_apply", "{float32}@CLIENTS"]),
    ("arithmetic on federated", _traced(_arithmetic, AT_CLIENTS), ["arithmetic", "{float32}@CLIENTS"]),
    ("attribute of non-struct", _traced(_attribute, AT_CLIENTS), ["'foo'", "{float32}@CLIENTS"]),
    ("missing struct name", _traced(_missing_name, "<a=int32>"), ["'b'", "<a=int32>"]),
    ("index out of range", _traced(_index, "<a=int32>"), ["index 5", "<a=int32>"]),
    ("iterate a tensor", _traced(_iterate, tf.int32), ["iterate", "int32"]),
    ("truth of federated", _traced(_truth, AT_SERVER), ["truth value", "float32@SERVER"]),
    ("call with wrong type", _traced(_call_with_wrong_type, fedcore.type_at_clients(tf.int32)), ["client_mean", "{float32}@CLIENTS", "{int32}@CLIENTS"]),
    ("federated call in TF code", lambda: fedcore.tf_computation(AT_CLIENTS.member)(_federated_in_tf), ["sum_plus_half", "federated computation"]),
    ("wrong arity in TF code", lambda: fedcore.tf_computation(tf.float32)(_tf_wrong_arity), ["add_half", "got 2"]),
]:
    case(DECORATORS, name, make, *names)

# Intrinsics outside a federated computation (plain Python, or TF code being traced) raise RuntimeError.
case(
    DECORATORS,
    "intrinsic in TF code",
    lambda: fedcore.tf_computation(tf.float32)(_intrinsic_in_tf),
    "federated_sum",
    "federated_computation",
    expect=(RuntimeError,),
)
for name, call in [
    ("federated_mean", lambda: fedcore.federated_mean([1.0])),
    ("federated_sum", lambda: fedcore.federated_sum(1)),
    ("federated_map", lambda: fedcore.federated_map(_identity, [1])),
    ("federated_value", lambda: fedcore.federated_value(1, fedcore.SERVER)),
    ("federated_broadcast", lambda: fedcore.federated_broadcast(1)),
    ("federated_zip", lambda: fedcore.federated_zip([1])),
    ("federated_eval", lambda: fedcore.federated_eval(_nothing, fedcore.SERVER)),
    ("federated_aggregate", lambda: fedcore.federated_aggregate([1], 0, None, None, None)),
    ("federated_secure_sum", lambda: fedcore.federated_secure_sum([1], 2)),
    ("sequence_reduce", lambda: fedcore.sequence_reduce([1], 0, None)),
]:
    case(DECORATORS, f"{name} outside tracing", call, name, "federated_computation", expect=(RuntimeError,))

# --------------------------------------------------------------------------
# Learning builders given bad models and optimizers.

LEARNING = "learning builders"


def _sgd(**kwargs):
    return learning.optimizers.SGD(**kwargs)


def _keras_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy()


for name, make, names in [
    ("model_fn not callable", lambda: learning.build_federated_averaging_process(3), ["model_fn", "3"]),
    ("model_fn returns Keras", lambda: learning.build_federated_averaging_process(_keras_model), ["model_fn", "Sequential", "from_keras_model"]),
    ("model_fn returns None", lambda: learning.build_federated_averaging_process(lambda: None), ["model_fn", "None"]),
    ("fedsgd model_fn not callable", lambda: learning.build_federated_sgd_process("model"), ["model_fn", "'model'"]),
    ("evaluation model_fn not callable", lambda: learning.build_federated_evaluation(3), ["model_fn", "3"]),
    ("client optimizer not callable", lambda: learning.build_federated_averaging_process(_model_fn, client_optimizer_fn=3), ["client_optimizer_fn", "3"]),
    ("client optimizer a string", lambda: learning.build_federated_averaging_process(_model_fn, client_optimizer_fn=lambda: "sgd"), ["client_optimizer_fn", "'sgd'"]),
    ("server optimizer None", lambda: learning.build_federated_averaging_process(_model_fn, server_optimizer_fn=lambda: None), ["server_optimizer_fn", "None"]),
    ("server optimizer RMSprop", lambda: learning.build_federated_averaging_process(_model_fn, server_optimizer_fn=lambda: __import__("keras").optimizers.RMSprop()), ["server_optimizer_fn", "RMSprop"]),
    ("SGD negative rate", lambda: _sgd(learning_rate=-1), ["learning_rate", "-1"]),
    ("SGD string rate", lambda: _sgd(learning_rate="a"), ["learning_rate", "'a'"]),
    ("Adam beta", lambda: learning.optimizers.Adam(learning_rate=0.1, beta_1=2), ["beta_1", "2.0"]),
    ("Keras input_spec unknown dtype", lambda: learning.from_keras_model(_keras_model(), _keras_loss(), "float33"), ["input_spec", "'float33'"]),
    ("Keras input_spec one part", lambda: learning.from_keras_model(_keras_model(), _keras_loss(), tf.TensorSpec([None, 4])), ["input_spec", "float32[?,4]"]),
    ("Keras model a number", lambda: learning.from_keras_model(3, _keras_loss(), BATCH), ["Keras", "3"]),
    ("Keras loss a number", lambda: learning.from_keras_model(_keras_model(), 3, BATCH), ["loss", "3"]),
    ("Keras unknown loss name", lambda: learning.from_keras_model(_keras_model(), "no_such_loss", BATCH), ["no_such_loss"]),
    ("Keras metric a number", lambda: learning.from_keras_model(_keras_model(), _keras_loss(), BATCH, metrics=[3]), ["metrics", "3"]),
    ("Keras unknown metric name", lambda: learning.from_keras_model(_keras_model(), _keras_loss(), BATCH, metrics=["nope"]), ["nope"]),
    ("compiled model not compiled", lambda: learning.from_compiled_keras_model(_keras_model(), (np.zeros((2, 4)), np.zeros(2))), ["not compiled"]),
    ("IterativeProcess of numbers", lambda: learning.IterativeProcess(3, 4), ["initialize_fn", "3"]),
    ("IterativeProcess mismatched", lambda: learning.IterativeProcess(_fedavg()[0].initialize, _evaluation()), ["next_fn", "optimizer_state"]),
]:
    case(LEARNING, name, make, *names)

# --------------------------------------------------------------------------
# Corrupt checkpoints (fedcore.learning.checkpoint).

CHECKPOINTS = "checkpoints"


def _checkpoint_case(damage: Callable[[bytes], bytes], template: bool = False):
    import tempfile

    from fedcore.learning import checkpoint

    def run():
        state = _fedavg()[1]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / checkpoint.checkpoint_name(3)
            path.write_bytes(damage(checkpoint.encode(state, 3)))
            checkpoint.load_checkpoint(path, template=_other_template() if template else None)

    return run


def _other_template():
    return {"model": np.zeros(3, np.float32)}


def _flip(data: bytes, position: int) -> bytes:
    data = bytearray(data)
    data[position] ^= 0xFF
    return bytes(data)


for name, damage, template, names in [
    ("empty file", lambda b: b"", False, ["checkpoint-00000003.fckpt"]),
    ("truncated", lambda b: b[: len(b) // 2], False, ["checkpoint-00000003.fckpt"]),
    ("last byte cut", lambda b: b[:-1], False, ["checkpoint-00000003.fckpt"]),
    ("flipped magic", lambda b: _flip(b, 0), False, ["checkpoint-00000003.fckpt"]),
    ("flipped hash", lambda b: _flip(b, 10), False, ["checkpoint-00000003.fckpt"]),
    ("flipped payload", lambda b: _flip(b, len(b) - 20), False, ["checkpoint-00000003.fckpt"]),
    ("not a checkpoint", lambda b: b"PK\x03\x04 a zip file", False, ["checkpoint-00000003.fckpt"]),
    ("other structure", lambda b: b, True, ["checkpoint-00000003.fckpt"]),
]:
    case(CHECKPOINTS, name, _checkpoint_case(damage, template), *names)


def _missing_checkpoint():
    from fedcore.learning import checkpoint

    checkpoint.load_checkpoint("/nonexistent/fedcore/checkpoint-00000001.fckpt")


def _empty_checkpoint_dir():
    import tempfile

    from fedcore.learning import checkpoint

    with tempfile.TemporaryDirectory() as folder:
        checkpoint.load_checkpoint(folder)


case(CHECKPOINTS, "missing file", _missing_checkpoint, "/nonexistent/fedcore/checkpoint-00000001.fckpt")
case(CHECKPOINTS, "directory without checkpoints", _empty_checkpoint_dir, "holds no checkpoint")


# --------------------------------------------------------------------------
# The tests.


@pytest.mark.parametrize("bad", CASES, ids=[f"{c.category}: {c.name}" for c in CASES])
def test_bad_input_raises_a_clear_error(bad: Case):
    error = None
    with deadline(DEADLINE_S):
        try:
            result = bad.fn()
        except Hang:
            raise
        except BaseException as e:  # noqa: BLE001 -- SystemExit and friends are judged below
            error = e
    if error is None:
        pytest.fail(f"{bad.name}: returned {result!r} instead of raising")
    detail = "".join(traceback.format_exception(error))
    assert isinstance(error, bad.expect), f"expected {bad.expect}, got:\n{detail}"
    if not issubclass(type(error), tuple(e for e in bad.expect if issubclass(e, INTERNAL))):
        assert not isinstance(error, INTERNAL), f"internal error:\n{detail}"
    message = str(error)
    for name in bad.names:
        assert name in message, f"the message does not mention {name!r}:\n{message}"


def test_case_names_are_unique():
    names = [(c.category, c.name) for c in CASES]
    assert len(names) == len(set(names))


def test_a_hang_fails_the_case():
    import time

    with pytest.raises(Hang):
        with deadline(0.2):
            time.sleep(5)


def test_deep_but_allowed_nesting_round_trips():
    for text in ("<" * 99 + "int32" + ">" * 99, "int32" + "*" * 99, "{" + "<" * 98 + "int32" + ">" * 98 + "}@CLIENTS"):
        t = parse(text)
        assert parse(str(t)) == t and str(t) == text


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_docs_count_the_cases():
    section = _section(DOCS.read_text(), "## Bad inputs")
    rows = dict(re.findall(r"^\| ([^|*]+?) \| (\d+) \|$", section, flags=re.M))
    counts = collections.Counter(c.category for c in CASES)
    assert {k: int(v) for k, v in rows.items()} == dict(counts)
    total = re.search(r"^\| \*\*total\*\* \| \*\*(\d+)\*\* \|$", section, flags=re.M)
    assert total is not None and int(total.group(1)) == len(CASES)


# --------------------------------------------------------------------------
# Fuzzing the type parser.

NOTATION = "<>{}()[]*?,=@-> \n_./0123456789abfgilnostpTUCLIENTSERVR"

dims = st.lists(st.one_of(st.none(), st.integers(0, 2**40)), max_size=3)
tensors = st.builds(TensorType, st.sampled_from(DTYPE_NAMES), st.one_of(st.none(), dims))
element_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_./\-]{0,6}", fullmatch=True)


def _structs(children):
    def build(items):
        seen, elements = set(), []
        for name, t in items:
            if name is not None and name in seen:
                name = None
            seen.add(name)
            elements.append((name, t))
        return StructType(elements)

    return st.lists(st.tuples(st.one_of(st.none(), element_names), children), max_size=4).map(build)


unplaced = st.recursive(tensors, lambda children: st.one_of(_structs(children), children.map(SequenceType)), max_leaves=8)
federated = st.builds(FederatedType, unplaced, st.sampled_from(["SERVER", "CLIENTS"]), st.booleans())
values = st.one_of(unplaced, federated, _structs(federated))
types = st.one_of(values, st.builds(FunctionType, st.one_of(st.none(), values), values))


def check_parse(text: str) -> None:
    """The parser's contract: a type that prints back to itself, or a TypeError/ValueError."""
    try:
        t = parse(text)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    assert parse(str(t)) == t
    assert parse(t.formatted()) == t


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.text(max_size=40), st.text(alphabet=NOTATION, max_size=40)))
def test_fuzz_random_text(text):
    check_parse(text)


@FUZZ
@given(types)
def test_fuzz_valid_types_round_trip(t):
    assert parse(str(t)) == t
    assert parse(t.formatted()) == t


@FUZZ
@given(types, st.data())
def test_fuzz_mutated_type_strings(t, data):
    text = str(t)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "truncate", "swap"]))
        char = data.draw(st.sampled_from(NOTATION + "é\x00-"))
        if op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "insert":
            text = text[:i] + char + text[i:]
        elif op == "replace":
            text = text[:i] + char + text[i + 1 :]
        elif op == "duplicate":
            j = data.draw(st.integers(i, len(text)))
            text = text[:j] + text[i:j] + text[j:]
        elif op == "truncate":
            text = text[:i]
        elif i + 1 < len(text):
            text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    check_parse(text)

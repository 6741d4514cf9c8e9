"""Values at the user/executor boundary: to_internal, to_python, count_clients, infer_type."""

import collections

import attrs
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime.values import ArgumentError, count_clients, infer_type, to_internal, to_python
from fedcore.structure import Struct
from fedcore.types import SequenceType, StructType, TensorType, to_type

Point = collections.namedtuple("Point", ["x", "y"])


@attrs.define
class Pair:
    a: int
    b: float


def T(spec):
    return to_type(spec)


def test_argument_error_is_a_type_error():
    assert issubclass(fedcore.ArgumentError, TypeError)
    assert fedcore.ArgumentError is ArgumentError


# --------------------------------------------------------------------------
# to_internal: accepted values and their canonical form.


def test_scalars_become_0d_arrays_of_the_declared_dtype():
    value = to_internal(3, T("int32"))
    assert isinstance(value, np.ndarray) and value.shape == () and value.dtype == np.int32
    value = to_internal(3, T("float32"))  # an int is a fine float
    assert value.dtype == np.float32 and value == 3.0
    value = to_internal(2.0, T("int32"))  # a float without fractional part is a fine int
    assert value.dtype == np.int32 and value == 2
    assert to_internal(np.float64(1.5), T("float32")).dtype == np.float32
    assert to_internal(True, T("bool")).dtype == np.bool_


def test_tensors_with_shapes():
    value = to_internal([[1, 2], [3, 4]], T("int32[2,2]"))
    assert value.shape == (2, 2) and value.dtype == np.int32
    assert to_internal([[1, 2]], T("int32[?,2]")).shape == (1, 2)
    assert to_internal([1.0, 2.0, 3.0], T("float32[*]")).shape == (3,)
    assert to_internal(tf.constant([1, 2]), T("int32[2]")).tolist() == [1, 2]


def test_strings_become_str():
    assert to_internal("abc", T("string")) == "abc"
    assert to_internal(b"abc", T("string")) == "abc"
    assert type(to_internal(b"abc", T("string"))) is str
    words = to_internal(["a", "b"], T("string[2]"))
    assert list(words) == ["a", "b"]


def test_structs_become_struct_values_in_type_order():
    t = T("<a=int32,b=float32>")
    for value in ({"b": 2.0, "a": 1}, collections.OrderedDict(a=1, b=2.0), Pair(1, 2.0), [1, 2.0], (1, 2.0)):
        internal = to_internal(value, t)
        assert isinstance(internal, Struct)
        assert internal.names() == ("a", "b")
        assert internal.a == 1 and internal.b == 2.0
        assert internal.a.dtype == np.int32 and internal.b.dtype == np.float32
    named = to_internal(Point(1, 2), T("<x=int32,y=int32>"))
    assert named.x == 1 and named.y == 2


def test_federated_values():
    assert [int(v) for v in to_internal([1, 2, 3], T("{int32}@CLIENTS"))] == [1, 2, 3]
    assert to_internal((1, 2), T("{int32}@CLIENTS"))[1] == 2
    server = to_internal(5, T("int32@SERVER"))
    assert server == 5 and server.dtype == np.int32
    all_equal = to_internal(5, T("int32@CLIENTS"))  # one value, held by every client
    assert all_equal == 5


def test_sequences():
    seq = to_internal([1.0, 2.0], T("float32*"))
    assert isinstance(seq, list) and [float(v) for v in seq] == [1.0, 2.0]
    ds = tf.data.Dataset.from_tensor_slices([1.0, 2.0])
    assert to_internal(ds, T("float32*")) is ds


# --------------------------------------------------------------------------
# to_internal: bad arguments.


@pytest.mark.parametrize(
    "value, type_text, fragments",
    [
        (1.5, "int32", ["expected int32", "1.5", "fractional"]),
        ([1.0, 2.5], "int32[2]", ["expected int32[2]", "fractional"]),
        ("x", "int32", ["expected int32", "string"]),
        (True, "int32", ["expected int32", "boolean"]),
        (1, "bool", ["expected bool"]),
        (300, "int8", ["expected int8", "does not fit"]),
        (1, "string", ["expected string"]),
        (None, "int32", ["expected int32", "None"]),
        ([1, 2, 3], "int32[2]", ["expected int32[2]", "shape [3]"]),
        ([[1, 2]], "int32[2]", ["expected int32[2]", "shape [1,2]"]),
        (5, "int32[?]", ["expected int32[?]", "shape []"]),
        ([[1, 2], [3]], "int32[2,?]", ["expected int32[2,?]", "rectangular"]),
        (5, "{int32}@CLIENTS", ["expected {int32}@CLIENTS", "one value per client"]),
        ("ab", "{string}@CLIENTS", ["expected {string}@CLIENTS", "one value per client"]),
        (Point(1, 2), "{int32}@CLIENTS", ["expected {int32}@CLIENTS", "one value per client"]),
        ([1, "x"], "{int32}@CLIENTS", ["client 1", "expected int32"]),
        ({"a": 1, "c": 2}, "<a=int32,b=int32>", ["expected <a=int32,b=int32>", "'b'"]),
        (Point(1, 2), "<a=int32,b=int32>", ["expected <a=int32,b=int32>", "'x'", "'a'"]),
        (Pair(1, 2.0), "<a=int32,c=float32>", ["expected <a=int32,c=float32>", "'b'", "'c'"]),
        ([1], "<a=int32,b=int32>", ["expected <a=int32,b=int32>", "2 elements"]),
        ([1, 2, 3], "<int32,int32>", ["expected <int32,int32>", "2 elements"]),
        (7, "<a=int32>", ["expected a struct of type <a=int32>"]),
        ({"a": "x"}, "<a=int32>", ["argument.a", "expected int32"]),
        (1.0, "float32*", ["expected a sequence float32*"]),
        (["a"], "float32*", ["[0]", "expected float32"]),
        (1, "(int32 -> int32)", ["(int32 -> int32)", "not supported"]),
    ],
)
def test_bad_arguments_name_the_expected_type(value, type_text, fragments):
    with pytest.raises(ArgumentError) as info:
        to_internal(value, T(type_text))
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_dataset_of_the_wrong_element_type():
    ds = tf.data.Dataset.from_tensor_slices([1, 2])  # int32 elements
    with pytest.raises(ArgumentError, match=r"expected a dataset of float32\*, got a dataset of int32\*"):
        to_internal(ds, T("float32*"))


def test_a_dataset_that_passed_for_one_type_is_still_checked_against_another():
    # Datasets that passed are remembered per object and element type: passing the same object again is
    # free, and a different type is checked anew.
    ds = tf.data.Dataset.from_tensor_slices([1, 2])
    for _ in range(2):
        assert to_internal(ds, T("int32*")) is ds
        with pytest.raises(ArgumentError, match=r"expected a dataset of float32\*, got a dataset of int32\*"):
            to_internal(ds, T("float32*"))


def test_dataset_for_a_struct():
    with pytest.raises(ArgumentError, match=r"expected <a=int32>, got a dataset"):
        to_internal(tf.data.Dataset.range(2), T("<a=int32>"))


def test_where_names_the_path_to_the_bad_value():
    with pytest.raises(ArgumentError, match=r"arg\.metrics\[client 1\]\.loss: expected float32"):
        to_internal({"metrics": [{"loss": 1.0}, {"loss": "bad"}]}, T("<metrics={<loss=float32>}@CLIENTS>"), "arg")


# --------------------------------------------------------------------------
# Bad arguments through a computation call.


@fedcore.federated_computation(fedcore.type_at_clients(tf.int32), fedcore.type_at_clients(tf.int32))
def two_client_args(a, b):
    return fedcore.federated_sum(a), fedcore.federated_sum(b)


def test_client_list_length_mismatch_between_two_arguments():
    with pytest.raises(ArgumentError, match=r"disagree on the number of clients: \[2, 3\]"):
        two_client_args([1, 2], [1, 2, 3])
    assert two_client_args([1, 2], [3, 4]) == (3, 7)


def test_wrong_values_through_a_call():
    with pytest.raises(ArgumentError, match=r"two_client_args.*expected int32.*fractional"):
        two_client_args([1, 2.5], [1, 2])
    with pytest.raises(ArgumentError, match=r"expected \{int32\}@CLIENTS, a list with one value per client, got 3"):
        two_client_args(3, [1])
    # Wrong argument counts are reported like the same mistake made while tracing.
    with pytest.raises(fedcore.FederatedTypeError, match="expects 2 arguments"):
        two_client_args([1])
    with pytest.raises(ArgumentError, match=r"expects an argument of type <a=\{int32\}@CLIENTS,b=\{int32\}@CLIENTS>"):
        two_client_args()


def test_unknown_keyword_argument():
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['c'\]"):
        two_client_args([1], c=[1])
    with pytest.raises(TypeError, match="two values for argument 'a'"):
        two_client_args([1], a=[1])


def test_zero_parameter_computation_given_an_argument():
    @fedcore.federated_computation
    def hello():
        return "hi"

    with pytest.raises(ArgumentError, match="takes no arguments"):
        hello(1)


# --------------------------------------------------------------------------
# count_clients.


def test_count_clients():
    t = T("<a={int32}@CLIENTS,b=int32@SERVER,c=<d={float32}@CLIENTS>>")
    value = to_internal({"a": [1, 2, 3], "b": 0, "c": {"d": [1.0, 2.0, 3.0]}}, t)
    assert count_clients(value, t) == 3
    assert count_clients(to_internal([], T("{int32}@CLIENTS")), T("{int32}@CLIENTS")) == 0


def test_count_clients_is_none_without_client_values():
    assert count_clients(to_internal(1, T("int32@SERVER")), T("int32@SERVER")) is None
    assert count_clients(to_internal(1, T("int32@CLIENTS")), T("int32@CLIENTS")) is None  # all-equal: any number
    assert count_clients(None, None) is None


def test_count_clients_disagreement():
    t = T("<{int32}@CLIENTS,{int32}@CLIENTS>")
    value = to_internal([[1, 2], [1, 2, 3]], t)
    with pytest.raises(ArgumentError, match=r"disagree on the number of clients: \[2, 3\]"):
        count_clients(value, t)


# --------------------------------------------------------------------------
# to_python.


def test_to_python_scalars_and_strings():
    value = to_python(np.asarray(3, np.int64), T("int32"))
    assert value == 3 and isinstance(value, np.int32)
    assert to_python(np.array(b"abc", dtype=object), T("string")) == "abc"
    assert type(to_python(b"abc", T("string"))) is str
    words = to_python(np.array([b"a", b"b"], dtype=object), T("string[2]"))
    assert [type(w) for w in words] == [str, str]


def test_to_python_builds_declared_containers():
    t = T(collections.OrderedDict(a=tf.int32, b=tf.string))
    result = to_python(to_internal({"a": 1, "b": "x"}, t), t)
    assert type(result) is collections.OrderedDict and result == collections.OrderedDict(a=1, b="x")
    t = T(Point(tf.int32, tf.int32))
    assert to_python(to_internal(Point(1, 2), t), t) == Point(1, 2)
    t = T(Pair(tf.int32, tf.float32))
    assert to_python(to_internal(Pair(1, 2.0), t), t) == Pair(1, 2.0)
    t = T([tf.int32, tf.int32])
    assert to_python(to_internal([1, 2], t), t) == [1, 2]


def test_to_python_structs_without_container():
    t = T("<int32,int32>")
    assert to_python(to_internal([1, 2], t), t) == (1, 2)
    t = T("<a=int32,b=int32>")
    result = to_python(to_internal([1, 2], t), t)
    assert isinstance(result, Struct) and result.a == 1 and result.b == 2


def test_to_python_federated_and_sequences():
    t = T("{int32}@CLIENTS")
    assert to_python([np.int64(1), np.int64(2)], t) == [1, 2]
    assert all(isinstance(v, np.int32) for v in to_python([np.int64(1)], t))
    assert to_python(np.asarray(5), T("int32@SERVER")) == 5
    assert to_python(tf.data.Dataset.from_tensor_slices([1.0, 2.0]), T("float32*")) == [1.0, 2.0]
    assert to_python([np.asarray(1.0)], T("float32*")) == [1.0]


def test_round_trip():
    t = T(collections.OrderedDict(clients=fedcore.type_at_clients([tf.int32, tf.string]), server=fedcore.type_at_server(tf.float32)))
    value = collections.OrderedDict(clients=[[1, "a"], [2, "b"]], server=0.5)
    assert to_python(to_internal(value, t), t) == collections.OrderedDict(clients=[[1, "a"], [2, "b"]], server=0.5)


# --------------------------------------------------------------------------
# infer_type.


@pytest.mark.parametrize(
    "value, expected",
    [
        (1, "int32"),
        (1.0, "float32"),
        (True, "bool"),
        ("s", "string"),
        (b"s", "string"),
        (np.int64(3), "int64"),
        (np.float64(1.0), "float64"),
        (np.zeros([2, 3], np.float64), "float64[2,3]"),
        (np.array([1, 2], np.int32), "int32[2]"),
        (np.array(["a", "b"]), "string[2]"),
        (tf.constant([1.0, 2.0]), "float32[2]"),
        ([1, 2.0], "<int32,float32>"),
        ({"a": 1, "b": ["x"]}, "<a=int32,b=<string>>"),
        (Point(1, 2.0), "<x=int32,y=float32>"),
        (Pair(1, 2.0), "<a=int32,b=float32>"),
        (tf.data.Dataset.range(3), "int64*"),
        (tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=[1.0], y=[1])), "<x=float32,y=int32>*"),
    ],
)
def test_infer_type(value, expected):
    assert str(infer_type(value)) == expected


def test_infer_type_remembers_containers():
    assert infer_type(Point(1, 2)).container is Point
    assert infer_type(collections.OrderedDict(a=1)).container is collections.OrderedDict
    assert infer_type([1]).container is list
    assert isinstance(infer_type(tf.data.Dataset.range(1)), SequenceType)
    assert infer_type(1) == TensorType("int32")
    assert isinstance(infer_type({"a": 1}), StructType)


@pytest.mark.parametrize("value", [object(), None, lambda x: x, {1: 2}])
def test_infer_type_of_unsupported_values(value):
    with pytest.raises(ArgumentError, match="cannot infer a fedcore type"):
        infer_type(value)

"""to_type(): numpy, TensorFlow and Python containers to fedcore types.

The only module of the type tests that imports TensorFlow.
"""

import collections

import attrs
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import fedcore  # noqa: E402
from fedcore.types import (  # noqa: E402
    CLIENTS,
    SERVER,
    FederatedType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    parse,
    to_type,
)

Point = collections.namedtuple("Point", ["x", "y"])


@attrs.define
class Batch:
    x: object
    y: object


@attrs.frozen
class Weights:
    kernel: object
    bias: object


def test_to_type_is_exported_at_top_level():
    assert fedcore.to_type is to_type


@pytest.mark.parametrize(
    "spec,text",
    [
        (np.float32, "float32"),
        (np.int64, "int64"),
        (np.bool_, "bool"),
        (np.str_, "string"),
        (np.dtype("int32"), "int32"),
        (np.dtype("uint8"), "uint8"),
        (np.dtype("complex64"), "complex64"),
        (tf.float32, "float32"),
        (tf.int32, "int32"),
        (tf.bool, "bool"),
        (tf.string, "string"),
        (tf.bfloat16, "bfloat16"),
        (tf.float16, "float16"),
        (bool, "bool"),
        (int, "int32"),
        (float, "float32"),
        (str, "string"),
    ],
)
def test_dtypes(spec, text):
    t = to_type(spec)
    assert isinstance(t, TensorType)
    assert str(t) == text
    assert t.shape == ()


@pytest.mark.parametrize(
    "spec,text",
    [
        ((np.float32, [None, 784]), "float32[?,784]"),
        ((np.float32, (2, 3)), "float32[2,3]"),
        (("int32", [2]), "int32[2]"),
        (("int32", 3), "int32[3]"),
        (("int32", []), "int32"),
        ((tf.int64, None), "int64[*]"),
        ((tf.float32, tf.TensorShape([None, 10])), "float32[?,10]"),
        ((tf.float32, tf.TensorShape(None)), "float32[*]"),
        ((np.dtype("bool"), [0]), "bool[0]"),
    ],
)
def test_dtype_shape_pairs(spec, text):
    t = to_type(spec)
    assert isinstance(t, TensorType)
    assert str(t) == text


def test_pair_of_dtypes_is_a_struct_not_a_tensor():
    t = to_type((tf.int32, tf.float32))
    assert isinstance(t, StructType)
    assert str(t) == "<int32,float32>"
    assert t.container is tuple


@pytest.mark.parametrize(
    "spec,text",
    [
        (tf.TensorSpec([None, 784], tf.float32), "float32[?,784]"),
        (tf.TensorSpec([], tf.bool), "bool"),
        (tf.TensorSpec([3], tf.int64), "int64[3]"),
        (tf.TensorSpec(None, tf.int32), "int32[*]"),
        (tf.TensorSpec([None, None], tf.string), "string[?,?]"),
        (tf.TensorSpec(tf.TensorShape(None), tf.float32, name="x"), "float32[*]"),
    ],
)
def test_tensor_specs(spec, text):
    t = to_type(spec)
    assert t == parse(text)
    assert str(t) == text


def test_tensor_type_from_tf_shape_and_dtype():
    assert TensorType(tf.float32, tf.TensorShape([None, 3])) == parse("float32[?,3]")
    assert TensorType(tf.int32, tf.TensorShape(None)).shape is None


def test_unsupported_tf_dtype_is_a_type_error_naming_it():
    # tf.resource has no numpy dtype; its as_numpy_dtype raises KeyError.
    with pytest.raises(TypeError, match="unknown dtype tf.resource"):
        to_type(tf.TensorSpec([None], tf.resource))
    with pytest.raises(TypeError, match="tf.variant"):
        TensorType(tf.variant)


def _dict_dataset():
    return tf.data.Dataset.from_tensor_slices(
        {"x": np.zeros([8, 784], np.float32), "y": np.zeros([8], np.int32)}
    ).batch(4)


def test_dataset_element_spec_and_dataset():
    ds = _dict_dataset()
    element = to_type(ds.element_spec)
    assert str(element) == "<x=float32[?,784],y=int32[?]>"
    assert element.container is dict
    sequence = to_type(ds)
    assert isinstance(sequence, SequenceType)
    assert str(sequence) == "<x=float32[?,784],y=int32[?]>*"
    assert str(fedcore.type_at_clients(sequence)) == "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"


def test_dataset_spec():
    ds = _dict_dataset()
    spec = tf.data.DatasetSpec(ds.element_spec)
    assert to_type(spec) == to_type(ds)
    assert str(to_type(tf.data.DatasetSpec(tf.TensorSpec([None], tf.int64)))) == "int64[?]*"


def test_unbatched_datasets():
    assert str(to_type(tf.data.Dataset.range(5))) == "int64*"
    ds = tf.data.Dataset.from_tensor_slices((np.zeros([4, 3], np.float32), np.zeros([4], np.int64)))
    t = to_type(ds)
    assert str(t) == "<float32[3],int64>*"
    assert t.element.container is tuple
    od = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(b=[1.0], a=[2]))
    assert str(to_type(od)) == "<b=float32,a=int32>*"


@pytest.mark.parametrize(
    "spec,text,container",
    [
        ([tf.int32, "float32[3]"], "<int32,float32[3]>", list),
        ((np.float32, np.int32, np.bool_), "<float32,int32,bool>", tuple),
        ({"a": np.int32, "b": (np.float32, [2])}, "<a=int32,b=float32[2]>", dict),
        (collections.OrderedDict(b=tf.bool, a=np.int32), "<b=bool,a=int32>", collections.OrderedDict),
        (Point(np.int32, "bool"), "<x=int32,y=bool>", Point),
        (Batch(x=(np.float32, [None, 784]), y=np.int32), "<x=float32[?,784],y=int32>", Batch),
        (
            Weights(kernel=tf.TensorSpec([2, 3], tf.float32), bias="float32[3]"),
            "<kernel=float32[2,3],bias=float32[3]>",
            Weights,
        ),
        ([], "<>", list),
        ((), "<>", tuple),
        ({}, "<>", dict),
    ],
)
def test_containers(spec, text, container):
    t = to_type(spec)
    assert isinstance(t, StructType)
    assert str(t) == text
    assert t.container is container


def test_dict_keeps_insertion_order():
    assert to_type({"b": "int32", "a": "bool"}).names() == ("b", "a")


def test_nested_containers_remember_each_level():
    t = to_type({"model": Point(x=[np.float32, np.float32], y=("int32", [2])), "n": int})
    assert str(t) == "<model=<x=<float32,float32>,y=int32[2]>,n=int32>"
    assert t.container is dict
    assert t["model"].container is Point
    assert t["model"]["x"].container is list


def test_type_strings_and_types_pass_through():
    assert to_type("{<x=float32[?,784],y=int32[?]>*}@CLIENTS") == parse(
        "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"
    )
    t = FederatedType(TensorType("int32"), SERVER)
    assert to_type(t) is t
    assert to_type(CLIENTS) == PlacementType()
    assert to_type(["int32@SERVER", "{bool}@CLIENTS"]) == parse("<int32@SERVER,{bool}@CLIENTS>")


@pytest.mark.parametrize(
    "spec,shown",
    [
        (3, "3"),
        (2.5, "2.5"),
        (object, "object"),
        (np.zeros(3), "array"),
        (tf.constant(1), "tf.Tensor"),
        (tf.RaggedTensorSpec([None, None], tf.int32), "RaggedTensorSpec"),
        ([np.int32, 7], "7"),
        ({"a": {"b": 1.5}}, "1.5"),
    ],
)
def test_unconvertible_input_is_a_type_error_naming_it(spec, shown):
    with pytest.raises(TypeError) as info:
        to_type(spec)
    assert "cannot convert" in str(info.value)
    assert shown in str(info.value)


def test_none_and_bad_keys():
    with pytest.raises(TypeError, match="cannot convert None"):
        to_type(None)
    with pytest.raises(TypeError, match="dict keys of a type spec must be strings, got 1"):
        to_type({1: np.int32})


def test_bad_type_strings_raise_parse_errors():
    with pytest.raises(ValueError, match="column 9"):
        to_type("<a=int32")
    with pytest.raises(TypeError, match="unknown dtype 'float33'"):
        to_type("float33[2]")


def test_bad_shape_in_pair():
    with pytest.raises(ValueError, match="-2"):
        to_type(("int32", [-2]))


def test_tensor_np_and_tf_dtypes_round_trip():
    for name in ("int32", "float32", "bool", "bfloat16", "string"):
        t = TensorType(name)
        assert to_type(t.tf_dtype) == t
    assert to_type(TensorType("float64").np_dtype) == TensorType("float64")

"""TFF's ways of writing types, and TFF's names for type methods and constructors."""

import collections

import attrs
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import fedcore
from fedcore.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    StructType,
    StructWithPythonType,
    TensorType,
    at_clients,
    at_server,
    parse,
    to_type,
)


@attrs.frozen
class Pair:
    a: object
    b: object


def test_a_named_pair_is_a_named_element():
    assert str(to_type(("a", tf.int32))) == "<a=int32>"
    assert str(to_type(("a", ("b", np.float32)))) == "<a=<b=float32>>"
    assert str(to_type(("x", (tf.float32, [None, 784])))) == "<x=float32[?,784]>"


def test_a_list_of_named_pairs_is_a_named_struct():
    t = to_type([("a", tf.int32), ("b", tf.bool)])
    assert str(t) == "<a=int32,b=bool>"
    assert t.container is None  # values come back as fedcore.Struct, as in TFF
    assert str(to_type((("a", tf.int32), ("b", [tf.bool, tf.int64])))) == "<a=int32,b=<bool,int64>>"


def test_named_and_unnamed_elements_mix():
    assert str(to_type([("a", tf.int32), tf.bool])) == "<a=int32,bool>"
    assert str(to_type([tf.bool, ("a", "float32[2]"), (tf.int32, [3])])) == "<bool,a=float32[2],int32[3]>"


def test_type_strings_keep_their_meaning_in_pairs():
    # A string that is a type is read as the type: fedcore's (dtype, shape) pairs and tuples of type strings.
    assert to_type(("int32", [2])) == TensorType("int32", [2])
    assert to_type(("float32", None)) == TensorType("float32", None)
    assert str(to_type(("int32", "bool"))) == "<int32,bool>"
    assert str(to_type((tf.float32, [None, 3]))) == "float32[?,3]"


def test_a_name_is_no_longer_read_as_a_dtype():
    # It used to fail with "unknown dtype 'a'".
    assert to_type(("a", tf.int32)) == StructType([("a", TensorType("int32"))])
    with pytest.raises(TypeError, match="cannot convert None"):
        to_type(("a", None))
    # A failed (dtype, shape) pair names both readings.
    with pytest.raises(TypeError, match=r"as a \(dtype, shape\) pair, unknown dtype 'float33'.*as an element named 'float33'"):
        to_type(("float33", [2]))


def test_struct_type_takes_bare_dtypes_and_specs():
    assert str(StructType([tf.int32, ("a", tf.bool)])) == "<int32,a=bool>"
    assert str(StructType([np.float32, (tf.int32, [2]), "bool"])) == "<float32,int32[2],bool>"
    assert str(StructType([("int32", [2])])) == "<int32[2]>"
    with pytest.raises(TypeError, match="struct element must be"):
        StructType([object()])


def test_attrs_classes_and_structs_as_containers():
    t = to_type(Pair(a=tf.int32, b=("c", tf.bool)))
    assert str(t) == "<a=int32,b=<c=bool>>"
    assert t.python_container is Pair
    s = to_type(fedcore.Struct([("a", tf.int32), (None, tf.bool)]))
    assert str(s) == "<a=int32,bool>"
    assert s.python_container is fedcore.Struct


def test_struct_with_python_type():
    t = StructWithPythonType([("a", tf.int32), ("b", tf.bool)], collections.OrderedDict)
    assert t == to_type(collections.OrderedDict(a=tf.int32, b=tf.bool))
    assert t.python_container is collections.OrderedDict
    assert StructWithPythonType([tf.int32], list).container is list
    with pytest.raises(TypeError, match="container must be a Python class"):
        StructWithPythonType([tf.int32], "list")


def test_tff_named_methods():
    t = parse("<a=int32,b=<c=float32[?]>>")
    assert t.compact_representation() == "<a=int32,b=<c=float32[?]>>" == str(t)
    assert t.formatted_representation() == t.formatted()
    assert parse(t.formatted_representation()) == t
    t.check_equivalent_to(parse("<a=int32,b=<c=float32[?]>>"))
    with pytest.raises(TypeError, match=r"type <a=int32,b=<c=float32\[\?\]>> is not equivalent to type <a=int32>"):
        t.check_equivalent_to(parse("<a=int32>"))
    with pytest.raises(TypeError, match="float32\\[3\\]"):
        # assignable one way only: not equivalent
        TensorType("float32", [None]).check_equivalent_to(TensorType("float32", [3]))
    with pytest.raises(TypeError, match="expected a fedcore type"):
        t.check_equivalent_to("<a=int32>")


def test_attribute_access_on_named_struct_types():
    t = parse("<a=int32,b=<c=float32>,names=bool,int64>")
    assert t.a == TensorType("int32")
    assert t.b.c == TensorType("float32")
    # StructType's own attributes win; an element so named is reached by subscript.
    assert t.names() == ("a", "b", "names", None)
    assert t["names"] == TensorType("bool")
    assert t.container is None and t.elements[0][0] == "a"
    with pytest.raises(AttributeError, match="struct type <a=int32,.*> has no element named 'zz'"):
        t.zz
    assert not hasattr(t, "_private")
    assert not hasattr(t, "shape")


def test_at_server_and_at_clients():
    assert at_server(tf.int32) == FederatedType(TensorType("int32"), SERVER)
    assert str(at_clients([("x", tf.float32)])) == "{<x=float32>}@CLIENTS"
    assert str(at_clients(tf.int32, all_equal=True)) == "int32@CLIENTS"
    assert at_clients(tf.int32).placement is CLIENTS
    assert fedcore.types.at_server is fedcore.types.type_at_server


# Names that are not themselves types (a dtype or 'placement' is read as the type).
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in fedcore.types.DTYPE_NAMES and n != "placement"
)
_DTYPES = st.sampled_from([tf.int32, tf.float32, tf.bool, np.int64, "float64"])


@st.composite
def _named_specs(draw):
    names = draw(st.lists(_NAMES, min_size=1, max_size=4, unique=True))
    named = draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    dtypes = draw(st.lists(_DTYPES, min_size=len(names), max_size=len(names)))
    return [((n, d) if keep else d, n if keep else None, d) for n, keep, d in zip(names, named, dtypes)]


@settings(max_examples=60, deadline=None)
@given(_named_specs())
def test_pairs_give_the_names_and_types_written(spec):
    # Each (name, dtype) pair is one named element, each bare dtype one unnamed element, in order.
    items = [s for s, _, _ in spec]
    t = to_type(items)
    if all(n is None for _, n, _ in spec):
        assert t.names() == (None,) * len(spec)
    else:
        assert t.names() == tuple(n for _, n, _ in spec)
    assert list(t) == [TensorType(d) for _, _, d in spec]
    assert parse(str(t)) == t
    assert StructType(items) == t

"""The type classes: construction, printing, immutability, equality, validation."""

import collections
import copy
import pickle
import re

import attrs
import numpy as np
import pytest

import fedcore
from fedcore.types import (
    CLIENTS,
    SERVER,
    AbstractType,
    FederatedType,
    FunctionType,
    Placement,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    to_placement,
    type_at_clients,
    type_at_server,
)

I32 = TensorType("int32")
F32 = TensorType("float32")
BOOL = TensorType("bool")
XY = StructType([("x", TensorType("float32", [None, 784])), ("y", TensorType("int32", [None]))])

# (type built from constructors, its exact compact notation)
GOLDEN = [
    (I32, "int32"),
    (BOOL, "bool"),
    (TensorType("float32", (None, 784)), "float32[?,784]"),
    (TensorType("float32", [10]), "float32[10]"),
    (TensorType("float32", 10), "float32[10]"),
    (TensorType("float32", None), "float32[*]"),
    (TensorType(np.float64, (0, None, 3)), "float64[0,?,3]"),
    (TensorType("string"), "string"),
    (StructType([("a", I32), ("b", TensorType("float32", [None]))]), "<a=int32,b=float32[?]>"),
    (StructType([]), "<>"),
    (StructType([I32, ("b", BOOL)]), "<int32,b=bool>"),
    (StructType([(None, I32), ("b", BOOL)]), "<int32,b=bool>"),
    (
        StructType(
            [("a", StructType([I32, BOOL])), ("b", StructType([("c", TensorType("float32", [2]))]))]
        ),
        "<a=<int32,bool>,b=<c=float32[2]>>",
    ),
    (SequenceType(I32), "int32*"),
    (SequenceType(XY), "<x=float32[?,784],y=int32[?]>*"),
    (SequenceType(SequenceType(I32)), "int32**"),
    (FederatedType(I32, SERVER), "int32@SERVER"),
    (FederatedType(F32, CLIENTS), "{float32}@CLIENTS"),
    (FederatedType(F32, CLIENTS, all_equal=True), "float32@CLIENTS"),
    (FederatedType(I32, SERVER, all_equal=False), "{int32}@SERVER"),
    (FederatedType(SequenceType(XY), CLIENTS), "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"),
    (FunctionType(I32, F32), "(int32 -> float32)"),
    (FunctionType(None, FederatedType(I32, SERVER)), "( -> int32@SERVER)"),
    (
        FunctionType(FederatedType(F32, CLIENTS), FederatedType(F32, SERVER)),
        "({float32}@CLIENTS -> float32@SERVER)",
    ),
    (FunctionType(FunctionType(I32, I32), FunctionType(None, BOOL)), "((int32 -> int32) -> ( -> bool))"),
    (PlacementType(), "placement"),
    (AbstractType("T"), "T"),
    (AbstractType("Model_2"), "Model_2"),
    (
        StructType([FunctionType(AbstractType("T"), AbstractType("U")), FederatedType(AbstractType("T"), CLIENTS)]),
        "<(T -> U),{T}@CLIENTS>",
    ),
    (StructType([("a.b/c-d", I32)]), "<a.b/c-d=int32>"),
]


@pytest.mark.parametrize("t,text", GOLDEN, ids=[text for _, text in GOLDEN])
def test_str_is_exact_compact_notation(t, text):
    assert str(t) == text
    assert t.compact() == text


@pytest.mark.parametrize("t,text", GOLDEN, ids=[text for _, text in GOLDEN])
def test_repr_is_not_the_notation_but_names_the_class(t, text):
    assert repr(t).startswith(type(t).__name__ + "(")


def test_repr_examples():
    assert repr(TensorType("float32", [None, 3])) == "TensorType('float32', (None, 3))"
    assert repr(FederatedType(I32, CLIENTS)) == (
        "FederatedType(TensorType('int32', ()), CLIENTS, all_equal=False)"
    )
    assert repr(SERVER) == "fedcore.SERVER"
    assert str(CLIENTS) == "CLIENTS"


# --- tensors -------------------------------------------------------------------------------


def test_tensor_dtype_is_canonicalized_from_numpy_and_strings():
    assert TensorType(np.float32).dtype == "float32"
    assert TensorType(np.dtype("int64")).dtype == "int64"
    assert TensorType(np.bool_).dtype == "bool"
    assert TensorType(np.str_).dtype == "string"
    assert TensorType("float16", [2]) == TensorType(np.float16, (2,))


def test_tensor_shape_is_a_tuple_and_a_copy():
    dims = [2, None]
    t = TensorType("int32", dims)
    dims.append(7)
    assert t.shape == (2, None)
    assert isinstance(t.shape, tuple)
    assert str(t) == "int32[2,?]"


def test_tensor_shape_accepts_numpy_ints():
    t = TensorType("int32", np.array([3, 4]))
    assert t.shape == (3, 4)
    assert all(type(d) is int for d in t.shape)


def test_tensor_rank_and_fully_defined():
    assert TensorType("int32").rank == 0
    assert TensorType("int32", [None, 2]).rank == 2
    assert TensorType("int32", None).rank is None
    assert TensorType("int32", [1, 2]).is_fully_defined()
    assert not TensorType("int32", [None, 2]).is_fully_defined()
    assert not TensorType("int32", None).is_fully_defined()
    assert TensorType("int32").is_fully_defined()


def test_tensor_np_dtype():
    assert TensorType("float32", [2]).np_dtype == np.dtype("float32")
    assert TensorType("string").np_dtype == np.dtype(object)


def test_unknown_rank_differs_from_unknown_dims_and_scalar():
    assert TensorType("float32", None) != TensorType("float32", [None])
    assert TensorType("float32", None) != TensorType("float32")
    assert TensorType("float32", []) == TensorType("float32")


# --- constructor errors --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float33", "int", "tensor", "placement"])
def test_unknown_dtype_string_names_it(dtype):
    with pytest.raises(TypeError, match=f"unknown dtype '{dtype}'"):
        TensorType(dtype)


def test_unknown_dtype_objects_name_them():
    with pytest.raises(TypeError, match=re.escape(repr(np.dtype("datetime64[s]")))):
        TensorType(np.dtype("datetime64[s]"))
    with pytest.raises(TypeError, match="unknown dtype None"):
        TensorType(None)  # np.dtype(None) would have been float64
    with pytest.raises(TypeError, match="unknown dtype"):
        TensorType(object())


def test_negative_dimension_is_refused_with_the_value():
    with pytest.raises(ValueError, match=r"-1") as info:
        TensorType("float32", [None, -1])
    assert "dimension" in str(info.value)
    with pytest.raises(ValueError, match=r"-3"):
        TensorType("float32", -3)


@pytest.mark.parametrize("shape", [[1.5], ["3"], [True], "3", 2.0])
def test_bad_dimension_type_is_refused(shape):
    with pytest.raises(TypeError) as info:
        TensorType("float32", shape)
    assert "dimension" in str(info.value) or "shape" in str(info.value)
    assert repr(shape) in str(info.value) or repr(shape[0]) in str(info.value)


def test_duplicate_struct_names_are_refused():
    with pytest.raises(ValueError, match="duplicate struct element name 'a'"):
        StructType([("a", I32), ("b", BOOL), ("a", F32)])


@pytest.mark.parametrize("name", ["", "1a", "a b", "a=b", "<x>", "é"])
def test_bad_struct_names_are_refused(name):
    with pytest.raises(ValueError) as info:
        StructType([(name, I32)])
    assert repr(name) in str(info.value)


def test_struct_name_must_be_a_string():
    with pytest.raises(ValueError, match="3"):
        StructType([(3, I32)])


def test_bad_struct_element_is_refused():
    with pytest.raises(TypeError, match=r"\('a', 'int32', 3\)"):
        StructType([("a", "int32", 3)])
    with pytest.raises(TypeError, match="42"):
        StructType(42)


def test_struct_element_specs_are_converted():
    t = StructType([("a", "int32"), ("b", np.float32), ("c", "<x=bool>")])
    assert str(t) == "<a=int32,b=float32,c=<x=bool>>"
    assert StructType({"a": "int32", "b": "bool"}) == StructType([("a", I32), ("b", BOOL)])


@pytest.mark.parametrize(
    "member,kind,shown",
    [
        (FederatedType(I32, SERVER), "federated", "int32@SERVER"),
        (FederatedType(F32, CLIENTS), "federated", "{float32}@CLIENTS"),
        (FunctionType(I32, I32), "function", "(int32 -> int32)"),
        (StructType([("f", FunctionType(None, I32))]), "function", "( -> int32)"),
        (StructType([FederatedType(I32, CLIENTS)]), "federated", "{int32}@CLIENTS"),
        (SequenceType(StructType([I32])), None, None),
        (PlacementType(), "placement", "placement"),
    ],
)
@pytest.mark.parametrize("placement", [SERVER, CLIENTS])
def test_federated_member_cannot_hold_federated_function_or_placement(member, kind, shown, placement):
    if kind is None:  # control: a sequence of structs is a fine member
        assert FederatedType(member, placement).member == member
        return
    with pytest.raises(TypeError) as info:
        FederatedType(member, placement)
    message = str(info.value)
    assert f"cannot hold a {kind} type" in message
    assert shown in message


@pytest.mark.parametrize(
    "element,shown",
    [
        (FederatedType(I32, SERVER), "int32@SERVER"),
        (FederatedType(I32, CLIENTS), "{int32}@CLIENTS"),
        (StructType([("a", I32), ("b", FederatedType(F32, CLIENTS))]), "{float32}@CLIENTS"),
        (FunctionType(I32, I32), "(int32 -> int32)"),
        (PlacementType(), "placement"),
    ],
)
def test_sequence_cannot_hold_federated_function_or_placement(element, shown):
    with pytest.raises(TypeError, match="sequence cannot hold") as info:
        SequenceType(element)
    assert shown in str(info.value)


def test_sequence_element_must_be_a_type():
    with pytest.raises(TypeError, match="42"):
        SequenceType(42)
    assert SequenceType("int32") == SequenceType(I32)


@pytest.mark.parametrize("placement", ["EDGE", "server_", "", 3, None])
def test_unknown_placement_is_refused_with_the_value(placement):
    with pytest.raises(ValueError) as info:
        FederatedType(I32, placement)
    assert repr(placement) in str(info.value)
    assert "SERVER and CLIENTS" in str(info.value)


def test_hand_made_placement_is_canonicalized_or_refused():
    with pytest.raises(ValueError, match="'EDGE'"):
        FederatedType(I32, Placement("EDGE"))
    t = FederatedType(I32, Placement("SERVER"))
    assert t.placement is SERVER
    assert t.all_equal is True
    assert FederatedType(I32, copy.deepcopy(CLIENTS)).placement is CLIENTS


def test_placement_names_in_any_case():
    assert to_placement("server") is SERVER
    assert to_placement("Clients") is CLIENTS
    assert FederatedType(I32, "clients") == FederatedType(I32, CLIENTS)


def test_all_equal_must_be_bool():
    with pytest.raises(TypeError, match="all_equal must be a bool, got 1"):
        FederatedType(I32, CLIENTS, all_equal=1)


@pytest.mark.parametrize("label", ["t", "1T", "T-1", "", "T U", "_T"])
def test_bad_abstract_label_is_refused(label):
    with pytest.raises(ValueError) as info:
        AbstractType(label)
    assert repr(label) in str(info.value)


def test_abstract_label_must_be_a_string():
    with pytest.raises(ValueError, match="42"):
        AbstractType(42)


def test_function_parameter_and_result_are_converted():
    assert FunctionType("int32", "float32[?]") == FunctionType(I32, TensorType("float32", [None]))
    assert FunctionType(None, "int32").parameter is None


# --- all_equal defaults ----------------------------------------------------------------------


def test_all_equal_defaults():
    assert FederatedType(I32, SERVER).all_equal is True
    assert FederatedType(I32, CLIENTS).all_equal is False
    assert FederatedType(I32, "SERVER").all_equal is True
    assert FederatedType(I32, "CLIENTS").all_equal is False
    assert FederatedType(I32, CLIENTS, all_equal=True).all_equal is True
    assert FederatedType(I32, SERVER, all_equal=False).all_equal is False
    # The default is resolved, so spelled-out and defaulted forms are the same type.
    assert FederatedType(I32, SERVER) == FederatedType(I32, SERVER, all_equal=True)
    assert FederatedType(I32, CLIENTS) == FederatedType(I32, CLIENTS, all_equal=False)
    assert FederatedType(I32, CLIENTS) != FederatedType(I32, CLIENTS, all_equal=True)


# --- immutability, hashing, equality -----------------------------------------------------------


@pytest.mark.parametrize(
    "t,field,value",
    [
        (I32, "dtype", "int64"),
        (TensorType("int32", [2]), "shape", (3,)),
        (XY, "elements", ()),
        (XY, "container", list),
        (SequenceType(I32), "element", F32),
        (FunctionType(I32, F32), "result", I32),
        (FederatedType(I32, CLIENTS), "all_equal", True),
        (FederatedType(I32, CLIENTS), "placement", SERVER),
        (AbstractType("T"), "label", "U"),
    ],
)
def test_types_are_frozen(t, field, value):
    before = str(t)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(t, field, value)
    assert str(t) == before


def test_types_have_no_instance_dict():
    with pytest.raises(AttributeError):
        I32.extra = 1


def test_struct_elements_are_an_immutable_copy():
    elements = [("a", I32)]
    t = StructType(elements)
    elements.append(("b", BOOL))
    assert len(t) == 1
    assert isinstance(t.elements, tuple)
    assert all(isinstance(e, tuple) for e in t.elements)


def test_structural_equality_and_hash():
    a = StructType([("x", TensorType("float32", [None, 784])), ("y", TensorType("int32", [None]))])
    assert a == XY
    assert a is not XY
    assert hash(a) == hash(XY)
    assert len({a, XY, SequenceType(a), SequenceType(XY)}) == 2
    table = {FederatedType(SequenceType(a), CLIENTS): "data"}
    assert table[FederatedType(SequenceType(XY), CLIENTS)] == "data"


@pytest.mark.parametrize(
    "a,b",
    [
        (StructType([("a", I32)]), StructType([I32])),
        (StructType([("a", I32)]), StructType([("b", I32)])),
        (StructType([I32, BOOL]), StructType([BOOL, I32])),
        (TensorType("float32", [None]), TensorType("float32", [3])),
        (FederatedType(I32, SERVER), FederatedType(I32, CLIENTS, all_equal=True)),
        (FunctionType(None, I32), FunctionType(StructType([]), I32)),
        (AbstractType("T"), AbstractType("U")),
        (SequenceType(I32), I32),
        (I32, TensorType("int64")),
    ],
)
def test_different_types_are_unequal(a, b):
    assert a != b
    assert not (a == b)


def test_types_survive_pickle_and_copy():
    t = FederatedType(SequenceType(XY), CLIENTS)
    assert pickle.loads(pickle.dumps(t)) == t
    assert copy.deepcopy(t) == t


def test_all_types_are_type_instances():
    for t, _ in GOLDEN:
        assert isinstance(t, Type)
    assert not isinstance(SERVER, Type)


# --- struct container ----------------------------------------------------------------------------

Point = collections.namedtuple("Point", ["x", "y"])


@attrs.define
class Batch:
    x: object
    y: object


@pytest.mark.parametrize("container", [list, tuple, dict, collections.OrderedDict, Point, Batch])
def test_struct_remembers_container_but_not_in_str_or_equality(container):
    elements = [("x", F32), ("y", I32)]
    plain = StructType(elements)
    kept = StructType(elements, container=container)
    assert kept.container is container
    assert plain.container is None
    assert str(kept) == str(plain) == "<x=float32,y=int32>"
    assert kept == plain
    assert hash(kept) == hash(plain)
    assert kept.formatted() == plain.formatted()


def test_container_is_keyword_only():
    with pytest.raises(TypeError):
        StructType([("x", F32)], list)


def test_containers_differ_but_types_are_equal():
    assert StructType([I32], container=list) == StructType([I32], container=tuple)
    assert len({StructType([I32], container=list), StructType([I32], container=tuple)}) == 1


# --- struct access ---------------------------------------------------------------------------------


def test_struct_access():
    t = StructType([("a", I32), BOOL, ("c", F32)])
    assert len(t) == 3
    assert list(t) == [I32, BOOL, F32]
    assert t.names() == ("a", None, "c")
    assert t[0] == I32 and t[1] == BOOL and t[-1] == F32
    assert t["c"] == F32
    assert t.index_of("c") == 2
    assert t.has_name("a") and not t.has_name("b")
    with pytest.raises(AttributeError, match="zz"):
        t.index_of("zz")
    with pytest.raises(AttributeError):
        t["zz"]


# --- top-level helpers ----------------------------------------------------------------------------


def test_top_level_helpers():
    assert fedcore.SERVER is SERVER
    assert fedcore.CLIENTS is CLIENTS
    assert str(fedcore.type_at_server("int32")) == "int32@SERVER"
    assert str(fedcore.type_at_clients("float32")) == "{float32}@CLIENTS"
    assert str(fedcore.type_at_clients(F32, all_equal=True)) == "float32@CLIENTS"
    assert fedcore.type_at_clients(F32).all_equal is False
    assert fedcore.type_at_server(np.int32) == FederatedType(I32, SERVER, all_equal=True)
    assert fedcore.type_at_server is type_at_server
    assert fedcore.type_at_clients is type_at_clients
    assert fedcore.to_type("int32[2]") == TensorType("int32", [2])
    assert str(type_at_clients(SequenceType(XY))) == "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"


def test_helpers_validate_members():
    with pytest.raises(TypeError, match="int32@SERVER"):
        type_at_clients(type_at_server(I32))


def test_version():
    assert isinstance(fedcore.__version__, str)
    parts = fedcore.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)
    assert fedcore.__version__ == "0.1.0"

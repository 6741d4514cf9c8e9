"""The IR node types: their type signatures, immutability, printing and construction checks."""

import attrs
import numpy as np
import pytest

from fedcore.compiler import building_blocks as bb
from fedcore.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    PlacementType,
    StructType,
    TensorType,
    to_type,
)

I32 = TensorType("int32")
F32 = TensorType("float32")
STR = TensorType("string")
AB = StructType([("a", I32), ("b", F32)])
CLIENT_INTS = FederatedType(I32, CLIENTS)
SERVER_INT = FederatedType(I32, SERVER)


def lit(value, t=I32):
    return bb.Literal(np.asarray(value, t.np_dtype), t)


def tf_comp(t="(int32 -> int32)", id="a1"):
    return bb.TensorFlowComputation(lambda v: v, to_type(t), "f", id=id)


def federated_map_of(fn_node, arg_type=CLIENT_INTS):
    member_result = fn_node.type_signature.result
    fn_type = FunctionType(
        StructType([(None, fn_node.type_signature), (None, arg_type)]), FederatedType(member_result, CLIENTS)
    )
    return bb.Intrinsic("federated_map", fn_type)


# --------------------------------------------------------------------------
# Type signatures and compact strings, node by node.


def test_reference():
    ref = bb.Reference("x", AB)
    assert ref.type_signature == AB
    assert bb.to_string(ref) == "x"
    assert ref.children() == ()


def test_selection_by_name():
    sel = bb.Selection(bb.Reference("x", AB), 1, "b")
    assert sel.type_signature == F32
    assert bb.to_string(sel) == "x.b"


def test_selection_by_name_only_fills_in_the_index():
    sel = bb.Selection(bb.Reference("x", AB), name="b")
    assert sel.index == 1
    assert sel.type_signature == F32
    assert bb.to_string(sel) == "x.b"


def test_selection_by_index():
    sel = bb.Selection(bb.Reference("x", AB), 0)
    assert sel.type_signature == I32
    assert bb.to_string(sel) == "x[0]"
    unnamed = bb.Selection(bb.Reference("t", StructType([I32, STR])), 1)
    assert unnamed.type_signature == STR
    assert bb.to_string(unnamed) == "t[1]"


def test_struct():
    node = bb.Struct([("a", bb.Reference("p", I32)), (None, bb.Literal("hi", STR))])
    assert node.type_signature == StructType([("a", I32), (None, STR)])
    assert str(node.type_signature) == "<a=int32,string>"
    assert bb.to_string(node) == "<a=p,'hi'>"
    assert len(node.children()) == 2


def test_struct_remembers_its_container():
    node = bb.Struct([("a", lit(1))], container=dict)
    assert node.type_signature.container is dict


def test_call():
    fn = bb.Lambda("x", I32, bb.Reference("x", I32))
    call = bb.Call(fn, lit(3))
    assert call.type_signature == I32
    assert bb.to_string(call) == "(x -> x)(3)"


def test_call_without_argument():
    fn = bb.Lambda(None, None, bb.Literal("s", STR))
    call = bb.Call(fn)
    assert call.type_signature == STR
    assert bb.to_string(call) == "( -> 's')()"


def test_call_accepts_an_assignable_argument():
    # A function expecting {int32}@CLIENTS accepts an all-equal int32@CLIENTS value.
    fn = bb.Reference("f", FunctionType(CLIENT_INTS, SERVER_INT))
    call = bb.Call(fn, bb.Reference("v", FederatedType(I32, CLIENTS, all_equal=True)))
    assert call.type_signature == SERVER_INT


def test_lambda():
    fn = bb.Lambda("x", AB, bb.Selection(bb.Reference("x", AB), name="a"))
    assert fn.type_signature == FunctionType(AB, I32)
    assert str(fn.type_signature) == "(<a=int32,b=float32> -> int32)"
    assert bb.to_string(fn) == "(x -> x.a)"


def test_lambda_without_parameter():
    fn = bb.Lambda(None, None, lit(7))
    assert fn.type_signature == FunctionType(None, I32)
    assert str(fn.type_signature) == "( -> int32)"
    assert bb.to_string(fn) == "( -> 7)"


def test_block():
    block = bb.Block([("a", lit(1)), ("b", bb.Reference("a", I32))], bb.Struct([(None, bb.Reference("b", I32))]))
    assert block.type_signature == StructType([I32])
    assert bb.to_string(block) == "(let a=1,b=a in <b>)"


def test_intrinsic():
    t = FunctionType(CLIENT_INTS, SERVER_INT)
    node = bb.Intrinsic("federated_sum", t)
    assert node.type_signature is t
    assert bb.to_string(node) == "federated_sum"


def test_tensor_literals():
    assert bb.to_string(lit(3)) == "3"
    assert lit(3).type_signature == I32
    assert bb.to_string(lit(1.5, F32)) == "1.5"
    assert bb.to_string(bb.Literal(np.asarray(True), TensorType("bool"))) == "true"
    vector = bb.Literal(np.array([1, 2], np.int32), TensorType("int32", [2]))
    assert vector.type_signature == TensorType("int32", [2])
    assert bb.to_string(vector) == "[1,2]:int32[2]"


def test_string_literal():
    node = bb.Literal("hello", STR)
    assert node.type_signature == STR
    assert bb.to_string(node) == "'hello'"


def test_placement():
    node = bb.Placement(CLIENTS)
    assert node.type_signature == PlacementType()
    assert str(node.type_signature) == "placement"
    assert bb.to_string(node) == "CLIENTS"
    assert bb.to_string(bb.Placement(SERVER)) == "SERVER"


def test_data():
    node = bb.Data("train", CLIENT_INTS)
    assert node.type_signature == CLIENT_INTS
    assert bb.to_string(node) == "data#train"


def test_tensorflow_computation():
    node = tf_comp("(int32 -> float32)", id="a1")
    assert str(node.type_signature) == "(int32 -> float32)"
    assert bb.to_string(node) == "comp#a1"


class _Fingerprinted:
    def __init__(self, fingerprint):
        self.fingerprint = fingerprint


def test_tensorflow_computation_ids_name_their_content():
    # The id is the start of the function's fingerprint: the same content prints the same, whatever ran before.
    first = bb.TensorFlowComputation(_Fingerprinted("0123456789abcdef" * 4), FunctionType(I32, I32))
    same = bb.TensorFlowComputation(_Fingerprinted("0123456789abcdef" * 4), FunctionType(I32, I32))
    other = bb.TensorFlowComputation(_Fingerprinted("fedcba9876543210" * 4), FunctionType(I32, I32))
    assert first.id == same.id == "01234567"
    assert bb.to_string(first) == "comp#01234567"
    assert bb.to_string(other) == "comp#fedcba98"
    # A stand-in function without a fingerprint is named by the node's name and type.
    assert bb.TensorFlowComputation(None, FunctionType(I32, I32), "f").id != bb.TensorFlowComputation(None, FunctionType(I32, I32), "g").id


# --------------------------------------------------------------------------
# Golden strings of whole programs.


def test_golden_federated_map_lambda():
    comp = tf_comp(id="a1")
    ref = bb.Reference("x", CLIENT_INTS)
    body = bb.Call(federated_map_of(comp), bb.Struct([(None, comp), (None, ref)]))
    program = bb.Lambda("x", CLIENT_INTS, body)
    assert bb.to_string(program) == "(x -> federated_map(<comp#a1,x>))"
    assert str(program.type_signature) == "({int32}@CLIENTS -> {int32}@CLIENTS)"
    # Without a Block, the formatted printer has nothing to break up.
    assert bb.to_formatted_string(program) == "(x -> federated_map(<comp#a1,x>))"


def _mean_of_mapped():
    comp = tf_comp("(int32 -> float32)", id="b2")
    x = bb.Reference("x", CLIENT_INTS)
    mapped = bb.Call(federated_map_of(comp), bb.Struct([(None, comp), (None, x)]))
    fed_floats = FederatedType(F32, CLIENTS)
    mean = bb.Call(
        bb.Intrinsic("federated_mean", FunctionType(fed_floats, FederatedType(F32, SERVER))),
        bb.Reference("a", fed_floats),
    )
    block = bb.Block([("a", mapped), ("b", mean)], bb.Struct([("mean", bb.Reference("b", FederatedType(F32, SERVER)))]))
    return bb.Lambda("x", CLIENT_INTS, block)


def test_golden_block_compact():
    program = _mean_of_mapped()
    assert bb.to_string(program) == (
        "(x -> (let a=federated_map(<comp#b2,x>),b=federated_mean(a) in <mean=b>))"
    )
    assert str(program.type_signature) == "({int32}@CLIENTS -> <mean=float32@SERVER>)"
    assert str(program) == bb.to_string(program)


def test_golden_block_formatted():
    assert bb.to_formatted_string(_mean_of_mapped()) == "\n".join(
        [
            "(x -> (let",
            "  a=federated_map(<comp#b2,x>),",
            "  b=federated_mean(a)",
            "in <mean=b>))",
        ]
    )


def test_golden_nested_blocks_formatted():
    inner = bb.Lambda("y", I32, bb.Block([("c", bb.Reference("y", I32))], bb.Reference("c", I32)))
    program = bb.Lambda("x", I32, bb.Block([("a", bb.Reference("x", I32)), ("b", inner)], bb.Reference("a", I32)))
    assert bb.to_string(program) == "(x -> (let a=x,b=(y -> (let c=y in c)) in a))"
    assert bb.to_formatted_string(program) == "\n".join(
        [
            "(x -> (let",
            "  a=x,",
            "  b=(y -> (let",
            "    c=y",
            "  in c))",
            "in a))",
        ]
    )


def test_walk_visits_parents_first():
    program = _mean_of_mapped()
    kinds = [type(n).__name__ for n in bb.walk(program)]
    assert kinds[:2] == ["Lambda", "Block"]
    assert kinds.count("Intrinsic") == 2
    assert kinds.count("TensorFlowComputation") == 1


# --------------------------------------------------------------------------
# Immutability.


@pytest.mark.parametrize(
    "node, field, value",
    [
        (bb.Reference("x", I32), "name", "y"),
        (bb.Reference("x", I32), "type_signature", F32),
        (bb.Selection(bb.Reference("x", AB), 0), "index", 1),
        (bb.Struct([("a", lit(1))]), "elements", ()),
        (bb.Call(bb.Lambda("x", I32, bb.Reference("x", I32)), lit(1)), "argument", lit(2)),
        (bb.Lambda("x", I32, bb.Reference("x", I32)), "parameter_name", "y"),
        (bb.Block([("a", lit(1))], bb.Reference("a", I32)), "result", lit(2)),
        (bb.Intrinsic("federated_sum", FunctionType(CLIENT_INTS, SERVER_INT)), "uri", "federated_mean"),
        (lit(1), "value", 2),
        (bb.Literal("s", STR), "value", "t"),
        (bb.Placement(SERVER), "placement", CLIENTS),
        (bb.Data("d", I32), "uri", "e"),
        (tf_comp(), "id", "zz"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, bb.BuildingBlock) else None,
)
def test_nodes_are_frozen(node, field, value):
    before = getattr(node, field)
    assert attrs.has(type(node))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(node, field, value)
    assert getattr(node, field) is before


def test_struct_elements_are_a_tuple_even_from_a_list():
    elements = [("a", lit(1))]
    node = bb.Struct(elements)
    elements.append(("b", lit(2)))
    assert isinstance(node.elements, tuple)
    assert len(node.elements) == 1
    assert str(node.type_signature) == "<a=int32>"


# --------------------------------------------------------------------------
# Bad construction.


def test_call_with_wrong_argument_type():
    fn = bb.Lambda("x", I32, bb.Reference("x", I32))
    with pytest.raises(TypeError, match=r"expects an argument of type int32, got float32"):
        bb.Call(fn, lit(1.0, F32))


def test_call_of_a_non_function():
    with pytest.raises(TypeError, match="not a function"):
        bb.Call(bb.Reference("v", I32), lit(1))


def test_call_missing_or_extra_argument():
    with pytest.raises(TypeError, match="needs an argument of type int32"):
        bb.Call(bb.Lambda("x", I32, bb.Reference("x", I32)))
    with pytest.raises(TypeError, match="takes no argument"):
        bb.Call(bb.Lambda(None, None, lit(1)), lit(2))


def test_call_of_federated_function_with_wrong_placement():
    fn = bb.Reference("f", FunctionType(CLIENT_INTS, SERVER_INT))
    with pytest.raises(TypeError, match=r"\{int32\}@CLIENTS, got int32@SERVER"):
        bb.Call(fn, bb.Reference("v", SERVER_INT))


@pytest.mark.parametrize("index", [2, -1, 100])
def test_selection_out_of_range(index):
    with pytest.raises(TypeError, match="out of range"):
        bb.Selection(bb.Reference("x", AB), index)


def test_selection_of_missing_name():
    with pytest.raises(TypeError, match="no element named 'nope'"):
        bb.Selection(bb.Reference("x", AB), name="nope")


def test_selection_name_must_match_index():
    with pytest.raises(TypeError, match="named 'a', not 'b'"):
        bb.Selection(bb.Reference("x", AB), 0, "b")


def test_selection_needs_index_or_name():
    with pytest.raises(TypeError, match="index or a name"):
        bb.Selection(bb.Reference("x", AB))


def test_selection_from_non_struct():
    with pytest.raises(TypeError, match="not a struct"):
        bb.Selection(bb.Reference("x", I32), 0)
    with pytest.raises(TypeError, match="not a struct"):
        bb.Selection(bb.Reference("x", FederatedType(AB, CLIENTS)), 0)


def test_literal_must_have_tensor_type():
    with pytest.raises(TypeError, match="tensor type"):
        bb.Literal(3, SERVER_INT)


@pytest.mark.parametrize(
    "build",
    [
        lambda: bb.Reference("x", "int32"),
        lambda: bb.Reference(3, I32),
        lambda: bb.Call(bb.Lambda("x", I32, bb.Reference("x", I32)), 3),
        lambda: bb.Call("f", lit(1)),
        lambda: bb.Selection(AB, 0),
        lambda: bb.Struct([("a", 1)]),
        lambda: bb.Struct([lit(1)]),
        lambda: bb.Block([(None, lit(1))], lit(1)),
        lambda: bb.Block([("a", lit(1))], 1),
        lambda: bb.Lambda("x", "int32", bb.Reference("x", I32)),
        lambda: bb.Intrinsic("federated_sum", "({int32}@CLIENTS -> int32@SERVER)"),
        lambda: bb.Data("d", None),
        lambda: bb.TensorFlowComputation(None, I32),
    ],
)
def test_malformed_nodes_raise_type_error(build):
    with pytest.raises(TypeError):
        build()


def test_lambda_needs_name_and_type_together():
    with pytest.raises(ValueError, match="both a parameter name and type"):
        bb.Lambda("x", None, lit(1))
    with pytest.raises(ValueError, match="both a parameter name and type"):
        bb.Lambda(None, I32, lit(1))

"""The IR's compact text reads back into the same program."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler.ir_parser import IRSyntaxError, parse_ir


@fedcore.tf_computation(tf.float32)
def add_half(x):
    return x + 0.5


@fedcore.federated_computation(fedcore.type_at_clients(collections.OrderedDict(a=tf.float32, b=tf.int32)))
def mixed(x):
    y = fedcore.federated_map(add_half, x.a)
    return [
        fedcore.federated_mean(y, x.b),
        fedcore.federated_sum(x.b),
        fedcore.federated_value(1.5, fedcore.SERVER),
        "hi",
        x[0],
    ]


def test_annotated_text_round_trips_a_traced_computation():
    text = bb.to_string(mixed.ir, annotated=True)
    node = parse_ir(text, computations={add_half.ir.id: add_half})
    assert bb.to_string(node, annotated=True) == text
    assert node.type_signature == mixed.type_signature


def test_parsed_program_runs_like_the_original():
    node = parse_ir(bb.to_string(mixed.ir, annotated=True), computations={add_half.ir.id: add_half})
    comp = fedcore.Computation(node, "parsed")
    clients = [dict(a=1.0, b=1), dict(a=3.0, b=3)]
    assert list(comp(clients)) == list(mixed(clients))


@pytest.mark.parametrize(
    "text, signature",
    [
        ("(x:{float32}@CLIENTS -> federated_mean(x))", "({float32}@CLIENTS -> float32@SERVER)"),
        ("(x:int32@SERVER -> federated_broadcast(x))", "(int32@SERVER -> int32@CLIENTS)"),
        ("( -> 'Hello, World!')", "( -> string)"),
        ("(x:<a=int32,b=bool> -> <b=x.b,x[0]>)", "(<a=int32,b=bool> -> <b=bool,int32>)"),
        ("(x:int32 -> (let a=x,b=<a,a> in b[1]))", "(int32 -> int32)"),
        ("(x:int32[3] -> <[1,2,3]:int32[3],-2.5,true,data#foo:float32>)", "(int32[3] -> <int32[3],float32,bool,float32>)"),
        ("(f:(int32 -> bool) -> f(1))", "((int32 -> bool) -> bool)"),
        ("( -> SERVER)", "( -> placement)"),
    ],
)
def test_hand_written_ir(text, signature):
    node = parse_ir(text)
    assert str(node.type_signature) == signature
    assert bb.to_string(node, annotated=True).replace(" ", "") == text.replace(" ", "")


def test_literal_values_are_kept():
    node = parse_ir("( -> <[1,2,3]:int32[3],2.5:float64>)")
    array, scalar = node.result.elements
    np.testing.assert_array_equal(array[1].value, [1, 2, 3])
    assert scalar[1].value.dtype == np.float64


def test_free_names_take_given_types():
    node = parse_ir("federated_sum(v)", types={"v": "{int32}@CLIENTS"})
    assert str(node.type_signature) == "int32@SERVER"


@pytest.mark.parametrize(
    "text, error, words",
    [
        ("(x -> x)", IRSyntaxError, "needs a type annotation"),
        ("(x:int32 -> y)", IRSyntaxError, "unbound name 'y'"),
        ("federated_mean(1.0)", TypeError, "{T}@CLIENTS"),
        ("(x:int32 -> x", IRSyntaxError, "column 14"),
        ("(x:int32 -> x.a)", TypeError, "from a value of type int32"),
        ("(x:int3 -> x)", TypeError, "unknown dtype 'int3'"),
        ("comp#7", IRSyntaxError, "comp#7"),
        ("(x:int32 -> federated_mean)", IRSyntaxError, "must be called"),
    ],
)
def test_bad_ir_gets_a_clear_error(text, error, words):
    with pytest.raises(error) as info:
        parse_ir(text)
    assert words in str(info.value)

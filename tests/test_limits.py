"""Structure limits: a type, an argument or a result may nest ``MAX_DEPTH`` levels deep and works
there on every executor; one level more is a clear error naming the limit, never a RecursionError."""

from __future__ import annotations

import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler.context import ArgumentError, FederatedTypeError
from fedcore.runtime import tensorflow as tf_runtime
from fedcore.types import MAX_DEPTH, SequenceType, StructType, TensorType, TypeNestingError, parse
from fedcore.types.core import INTERNAL_LEVELS


def nested_type(depth: int):
    """``<<...int32...>>``, ``depth`` levels deep (a tensor is one level)."""
    t = TensorType("int32")
    for _ in range(depth - 1):
        t = StructType([(None, t)])
    return t


def nested_value(depth: int, leaf=1):
    x = leaf
    for _ in range(depth - 1):
        x = [x]
    return x


def innermost(value):
    while isinstance(value, (list, tuple)):
        (value,) = value
    return value


def test_the_documented_limit_is_one_hundred():
    assert MAX_DEPTH == 100
    assert issubclass(TypeNestingError, TypeError) and issubclass(TypeNestingError, ValueError)


@pytest.mark.parametrize("depth", [MAX_DEPTH + INTERNAL_LEVELS + 1, 3000])
def test_constructors_refuse_a_type_deeper_than_the_limit_and_its_ir_headroom(depth):
    with pytest.raises(TypeNestingError, match=f"MAX_DEPTH={MAX_DEPTH}"):
        nested_type(depth)
    nested_type(MAX_DEPTH + INTERNAL_LEVELS)  # intrinsic calls around values at the limit need these


def test_declared_parameter_types_and_the_notation_are_held_to_the_limit():
    with pytest.raises(TypeNestingError, match=f"MAX_DEPTH={MAX_DEPTH}"):
        fedcore.tf_computation(nested_type(MAX_DEPTH + 1))(lambda x: x)
    with pytest.raises(TypeNestingError, match=f"MAX_DEPTH={MAX_DEPTH}"):
        fedcore.federated_computation(fedcore.type_at_clients(nested_type(MAX_DEPTH)))(lambda x: x)
    with pytest.raises(TypeNestingError, match=f"nests more than {MAX_DEPTH} levels"):
        parse(str(SequenceType(nested_type(MAX_DEPTH))))


def test_a_type_at_the_limit_prints_parses_and_compares():
    t = nested_type(MAX_DEPTH)
    assert parse(str(t)) == t and hash(parse(str(t))) == hash(t)
    assert t.is_assignable_from(nested_type(MAX_DEPTH))
    assert fedcore.FunctionType(t, t).parameter == t  # a function type adds no level
    with pytest.raises(ValueError, match=f"nests more than {MAX_DEPTH} levels"):
        parse("<" * MAX_DEPTH + "int32" + ">" * MAX_DEPTH)
    with pytest.raises(ValueError, match=f"nests more than {MAX_DEPTH} levels"):
        parse("<" * 3000 + "int32" + ">" * 3000)


@pytest.mark.parametrize("executor", ["reference", "tensorflow"])
@pytest.mark.parametrize("kind", ["tf", "federated"])
def test_a_computation_at_the_limit_runs(executor, kind):
    decorator = fedcore.tf_computation if kind == "tf" else fedcore.federated_computation
    comp = decorator(nested_type(MAX_DEPTH))(lambda x: x)
    if executor == "reference":
        result = comp(nested_value(MAX_DEPTH, 7))
    else:
        with fedcore.execution_context(tf_runtime.TensorFlowExecutor()):
            result = comp(nested_value(MAX_DEPTH, 7))
    assert innermost(result) == 7


def test_a_tf_result_at_the_limit_works():
    def deep():
        x = tf.constant(5)
        for _ in range(MAX_DEPTH - 1):
            x = (x,)
        return x

    comp = fedcore.tf_computation(deep)
    assert fedcore.types.core.nesting_depth(comp.type_signature.result) == MAX_DEPTH
    assert innermost(comp()) == 5


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 2000])
def test_a_result_deeper_than_the_limit_is_a_clear_error(depth):
    def deep():
        x = tf.constant(5)
        for _ in range(depth - 1):
            x = (x,)
        return x

    with pytest.raises(TypeNestingError, match=f"result nests more than MAX_DEPTH={MAX_DEPTH}"):
        fedcore.tf_computation(deep)
    with pytest.raises(FederatedTypeError, match=f"more than MAX_DEPTH={MAX_DEPTH}"):
        fedcore.federated_computation(lambda: nested_value(depth))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2000])
def test_a_polymorphic_argument_deeper_than_the_limit_is_a_clear_error(depth):
    with pytest.raises(ArgumentError, match=f"more than MAX_DEPTH={MAX_DEPTH}"):
        fedcore.tf_computation(lambda x: x)(nested_value(depth))

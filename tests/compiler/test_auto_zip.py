"""Intrinsics zip a struct of federated values of one placement, as TFF does; other structs are clear errors."""

import collections

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import fedcore
from fedcore.compiler.building_blocks import walk
from fedcore.compiler import building_blocks as bb

C = fedcore.type_at_clients
S = fedcore.type_at_server
Point = collections.namedtuple("Point", ["x", "y"])


@pytest.fixture(autouse=True)
def on_the_reference():
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        yield


@fedcore.tf_computation(tf.float32, tf.float32)
def add(x, y):
    return x + y


@fedcore.tf_computation(fedcore.to_type("<float32,float32>"))
def add_pair(pair):
    return pair[0] + pair[1]


@fedcore.tf_computation
def times(x, y):
    return x * y


@fedcore.tf_computation
def minus(p):
    return p["a"] - p["b"]


def uris(comp):
    return [n.uri for n in walk(comp.ir) if isinstance(n, bb.Intrinsic)]


@pytest.mark.parametrize(
    "pack",
    [lambda x, y: (x, y), lambda x, y: [x, y], lambda x, y: Point(x, y)],
    ids=["tuple", "list", "namedtuple"],
)
@pytest.mark.parametrize("fn", [add, add_pair, times], ids=["two-parameters", "struct-parameter", "polymorphic"])
def test_map_zips_a_struct_of_client_values(pack, fn):
    @fedcore.federated_computation(C(tf.float32), C(tf.float32))
    def implicit(x, y):
        return fedcore.federated_map(fn, pack(x, y))

    @fedcore.federated_computation(C(tf.float32), C(tf.float32))
    def explicit(x, y):
        return fedcore.federated_map(fn, fedcore.federated_zip(pack(x, y)))

    assert implicit.type_signature == explicit.type_signature
    assert str(implicit.type_signature) == "(<x={float32}@CLIENTS,y={float32}@CLIENTS> -> {float32}@CLIENTS)"
    assert "federated_zip_at_clients" in uris(implicit)
    xs, ys = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    expected = [a * b for a, b in zip(xs, ys)] if fn is times else [a + b for a, b in zip(xs, ys)]
    assert implicit(xs, ys) == pytest.approx(expected)
    assert implicit(xs, ys) == explicit(xs, ys)


@pytest.mark.parametrize("container", [dict, collections.OrderedDict])
def test_map_zips_a_dict_keeping_its_names(container):
    @fedcore.federated_computation(C(tf.float32), C(tf.float32))
    def diff(x, y):
        return fedcore.federated_map(minus, container(a=x, b=y))

    assert diff([5.0, 7.0], [1.0, 2.0]) == pytest.approx([4.0, 5.0])


def test_a_whole_struct_parameter_is_zipped():
    @fedcore.federated_computation(fedcore.to_type("<x={float32}@CLIENTS,y={float32}@CLIENTS>"))
    def whole(arg):
        return fedcore.federated_map(add, arg), fedcore.federated_sum(arg)

    mapped, summed = whole(([1.0, 2.0], [10.0, 20.0]))
    assert mapped == pytest.approx([11.0, 22.0])
    assert (summed.x, summed.y) == pytest.approx((3.0, 30.0))


def test_server_values_zip_for_apply_map_and_broadcast():
    @fedcore.federated_computation(S(tf.float32), S(tf.float32))
    def server(x, y):
        return fedcore.federated_apply(add, (x, y)), fedcore.federated_map(add, [x, y]), fedcore.federated_broadcast((x, y))

    assert str(server.type_signature.result) == "<float32@SERVER,float32@SERVER,<float32,float32>@CLIENTS>"
    applied, mapped, broadcast = server(1.0, 2.0)
    assert applied == mapped == 3.0
    assert broadcast == (1.0, 2.0)


def test_aggregations_zip_their_client_values():
    @fedcore.federated_computation(C(tf.float32), C(tf.float32))
    def stats(x, w):
        return (
            fedcore.federated_sum((x, w)),
            fedcore.federated_mean((x, w)),
            fedcore.federated_mean(x, weight=w),
            fedcore.federated_min([x, w]),
            fedcore.federated_max(Point(x, w)),
        )

    assert str(stats.type_signature.result) == (
        "<<float32,float32>@SERVER,<float32,float32>@SERVER,float32@SERVER,<float32,float32>@SERVER,"
        "<x=float32,y=float32>@SERVER>"
    )
    summed, mean, weighted, smallest, largest = stats([1.0, 3.0], [1.0, 3.0])
    assert summed == (4.0, 4.0) and mean == (2.0, 2.0)
    assert weighted == pytest.approx(2.5)  # (1*1 + 3*3) / 4
    assert smallest == [1.0, 1.0] and (largest.x, largest.y) == (3.0, 3.0)  # the containers the user gave


def test_aggregate_and_secure_sum_zip_their_value():
    @fedcore.tf_computation(tf.int32, fedcore.to_type("<int32,int32>"))
    def accumulate(acc, v):
        return acc + v[0] * v[1]

    @fedcore.tf_computation(tf.int32, tf.int32)
    def merge(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def report(a):
        return a

    @fedcore.federated_computation(C(tf.int32), C(tf.int32))
    def dot(x, y):
        return fedcore.federated_aggregate((x, y), np.int32(0), accumulate, merge, report), fedcore.federated_secure_sum(
            (x, y), 10
        )

    product, secure = dot([1, 2, 3], [4, 5, 6])
    assert product == 32
    assert secure == (6, 15)


def test_weighted_mean_zips_the_weight_like_tff():
    # TFF zips the weight too; a one-element struct of client weights is a federated struct, not a scalar.
    with pytest.raises(fedcore.FederatedTypeError, match="weight"):

        @fedcore.federated_computation(C(tf.float32), C(tf.float32))
        def bad(x, w):
            return fedcore.federated_mean(x, weight=(w,))


def test_the_same_result_on_the_tf_executor():
    from fedcore.runtime.tensorflow import TensorFlowExecutor

    @fedcore.federated_computation(C(tf.float32), C(tf.float32))
    def implicit(x, y):
        return fedcore.federated_map(add, (x, y)), fedcore.federated_mean((x, y))

    reference = implicit([1.0, 2.0], [3.0, 5.0])
    with fedcore.execution_context(TensorFlowExecutor()):
        assert implicit([1.0, 2.0], [3.0, 5.0]) == reference


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3, width=32), st.floats(-1e3, 1e3, width=32)), max_size=6))
def test_implicit_zip_agrees_with_explicit_zip(pairs):
    xs = [np.float32(a) for a, _ in pairs]
    ys = [np.float32(b) for _, b in pairs]
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        assert _implicit(xs, ys) == _explicit(xs, ys)
        mapped, _ = _implicit(xs, ys)
        # TensorFlow's CPU kernels flush subnormal results to zero; numpy keeps them.
        np.testing.assert_allclose(mapped, [np.float32(a + b) for a, b in zip(xs, ys)], rtol=0, atol=1e-37)


@fedcore.federated_computation(C(tf.float32), C(tf.float32))
def _implicit(x, y):
    return fedcore.federated_map(add, (x, y)), fedcore.federated_sum([x, y])


@fedcore.federated_computation(C(tf.float32), C(tf.float32))
def _explicit(x, y):
    return fedcore.federated_map(add, fedcore.federated_zip((x, y))), fedcore.federated_sum(fedcore.federated_zip([x, y]))


# --------------------------------------------------------------------------
# What cannot be zipped is a clear error, in the type notation.


def trace_error(build):
    with pytest.raises(fedcore.FederatedTypeError) as info:
        build()
    return str(info.value)


def test_mixed_placements_are_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32), S(tf.float32))
        def mixed(x, y):
            return fedcore.federated_map(add, (x, y))

    message = trace_error(build)
    assert "<{float32}@CLIENTS,float32@SERVER>" in message
    assert "CLIENTS (element 0) and SERVER (element 1)" in message
    assert "federated_broadcast" in message and "federated_zip" in message
    assert "test_auto_zip.py" in message


def test_a_non_federated_element_is_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32), tf.float32)
        def half(x, y):
            return fedcore.federated_map(add, (x, y))

    message = trace_error(build)
    assert "<{float32}@CLIENTS,float32>" in message
    assert "element 1 has the unplaced type float32" in message
    assert "federated_value" in message and "federated_zip" in message


def test_a_python_constant_element_is_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32))
        def constant(x):
            return fedcore.federated_sum(dict(a=x, b=2.0))

    message = trace_error(build)
    assert "<a={float32}@CLIENTS,b=float32>" in message and "element 'b'" in message


def test_nested_structs_are_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32), C(tf.float32))
        def nested(x, y):
            return fedcore.federated_sum((x, (x, y)))

    message = trace_error(build)
    assert "<{float32}@CLIENTS,<{float32}@CLIENTS,{float32}@CLIENTS>>" in message
    assert "zip that one first with federated_zip" in message


def test_the_empty_struct_is_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32))
        def empty(x):
            return fedcore.federated_sum(())

    assert "empty struct <>" in trace_error(build)


def test_a_zip_at_the_wrong_placement_names_both_types():
    def build():
        @fedcore.federated_computation(S(tf.float32), S(tf.float32))
        def server_sum(x, y):
            return fedcore.federated_sum((x, y))

    message = trace_error(build)
    assert "federated_sum expects a value placed at CLIENTS" in message
    assert "<float32@SERVER,float32@SERVER>" in message and "<float32,float32>@SERVER" in message


def test_apply_of_client_values_is_refused():
    def build():
        @fedcore.federated_computation(C(tf.float32), C(tf.float32))
        def applied(x, y):
            return fedcore.federated_apply(add, (x, y))

    message = trace_error(build)
    assert "federated_apply expects a value placed at SERVER" in message and "{<float32,float32>}@CLIENTS" in message


def test_a_two_parameter_function_over_one_value_suggests_zipping():
    def build():
        @fedcore.federated_computation(C(tf.float32))
        def one(x):
            return fedcore.federated_map(add, x)

    message = trace_error(build)
    assert "<(<x=float32,y=float32> -> float32),{float32}@CLIENTS>" in message
    assert "federated_map(fn, (x, y))" in message and "federated_zip" in message
    assert "test_auto_zip.py" in message


def test_an_unplaced_value_is_still_refused():
    def build():
        @fedcore.federated_computation(tf.int32)
        def summed(x):
            return fedcore.federated_sum(x)

    message = trace_error(build)
    assert "federated_sum expects a federated value" in message and "int32" in message

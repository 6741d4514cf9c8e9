"""Tracing Python functions into typed computations: decorator forms, polymorphism,
parameter packing, containers, TensorFlow computations, datasets, selections and
nesting."""

import collections
import logging
import sys

import attrs
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb

Point = collections.namedtuple("Point", ["x", "y"])


@attrs.define
class Metrics:
    loss: float
    num_examples: int


# --------------------------------------------------------------------------
# Decorator forms.


def test_decorator_with_types():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def average(x):
        return fedcore.federated_mean(x)

    assert isinstance(average, fedcore.Computation)
    assert str(average.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    assert average.to_ir_string() == "(x -> (let fc1=federated_mean(x) in fc1))"


def test_decorator_with_type_strings():
    @fedcore.federated_computation("{float32}@CLIENTS")
    def average(readings):
        return fedcore.federated_mean(readings)

    assert str(average.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    assert average.to_ir_string() == "(readings -> (let fc1=federated_mean(readings) in fc1))"


def test_decorator_with_several_type_strings():
    @fedcore.federated_computation("int32@SERVER", "{float32}@CLIENTS")
    def pair(round_num, readings):
        return round_num, fedcore.federated_mean(readings)

    assert str(pair.type_signature) == "(<round_num=int32@SERVER,readings={float32}@CLIENTS> -> <int32@SERVER,float32@SERVER>)"


def test_bare_decorator_is_polymorphic():
    @fedcore.federated_computation
    def identity(x):
        return x

    assert isinstance(identity, fedcore.PolymorphicComputation)
    with pytest.raises(TypeError, match="polymorphic"):
        identity.type_signature
    assert identity(3) == 3


def test_function_call_form_with_types():
    def add_one(x):
        return x + 1

    comp = fedcore.tf_computation(add_one, tf.int32)
    assert str(comp.type_signature) == "(int32 -> int32)"
    assert comp(41) == 42


def test_hello_world():
    assert fedcore.federated_computation(lambda: "Hello, World!")() == "Hello, World!"


def test_zero_argument_computation():
    @fedcore.federated_computation
    def hello():
        return "Hello, World!"

    assert isinstance(hello, fedcore.Computation)
    assert str(hello.type_signature) == "( -> string)"
    assert hello.to_ir_string() == "( -> 'Hello, World!')"
    result = hello()
    assert result == "Hello, World!" and type(result) is str


def test_zero_argument_computation_with_intrinsics():
    @fedcore.federated_computation()
    def at_server():
        return fedcore.federated_value(7, fedcore.SERVER)

    assert str(at_server.type_signature) == "( -> int32@SERVER)"
    assert at_server.to_ir_string() == "( -> (let fc1=federated_value_at_server(7) in fc1))"
    assert at_server() == 7


def test_python_and_numpy_constants_keep_their_types():
    @fedcore.federated_computation
    def constants():
        return (
            fedcore.federated_value(1.5, fedcore.SERVER),
            fedcore.federated_value(np.float64(1.5), fedcore.SERVER),
            fedcore.federated_value(2, fedcore.SERVER),
            fedcore.federated_value(np.int64(2), fedcore.SERVER),
            fedcore.federated_value(True, fedcore.SERVER),
        )

    assert str(constants.type_signature) == "( -> <float32@SERVER,float64@SERVER,int32@SERVER,int64@SERVER,bool@SERVER>)"
    result = constants()
    assert [type(v) for v in result] == [np.float32, np.float64, np.int32, np.int64, np.bool_]


def test_zero_argument_tf_computation():
    @fedcore.tf_computation
    def constant():
        return tf.constant([1.0, 2.0])

    assert str(constant.type_signature) == "( -> float32[2])"
    np.testing.assert_array_equal(constant(), [1.0, 2.0])


def test_decorator_without_types_for_a_function_with_parameters_is_polymorphic_not_an_error():
    @fedcore.tf_computation
    def f(a, b):
        return a + b

    assert isinstance(f, fedcore.PolymorphicComputation)


def test_decorator_types_must_match_parameters():
    with pytest.raises(TypeError, match="takes 2 parameters"):

        @fedcore.federated_computation(tf.int32, tf.int32, tf.int32)
        def f(a, b):
            return a


def test_decorator_rejects_a_bad_type():
    with pytest.raises(ValueError, match="bad parameter type for f"):

        @fedcore.federated_computation("{float32@CLIENTS")
        def f(x):
            return x


# --------------------------------------------------------------------------
# Polymorphic computations: traced per argument type, cached.


def test_polymorphic_federated_computation_traces_once_per_type():
    calls = []

    @fedcore.federated_computation
    def identity(x):
        calls.append(x.type_signature)
        return x

    assert identity(1) == 1
    assert identity(2) == 2
    assert len(calls) == 1
    assert identity(2.5) == 2.5
    assert [str(t) for t in calls] == ["int32", "float32"]
    assert identity("s") == "s"
    assert identity(4) == 4
    assert len(calls) == 3


def test_polymorphic_tf_computation_traces_once_per_type():
    calls = []

    @fedcore.tf_computation
    def double(x):
        calls.append(1)
        return x * 2

    assert double(3) == 6
    assert double(5) == 10
    assert len(calls) == 1
    np.testing.assert_array_equal(double(np.array([1.0, 2.0], np.float32)), [2.0, 4.0])
    assert len(calls) == 2
    # Specializing again at a known type reuses the traced computation.
    assert double._fedcore_specialize(fedcore.to_type(tf.int32)) is double._fedcore_specialize(fedcore.to_type(tf.int32))
    assert len(calls) == 2


def test_polymorphic_tf_computation_used_in_federated_map_is_specialized_to_the_member_type():
    calls = []

    @fedcore.tf_computation
    def double(x):
        calls.append(1)
        return x * 2

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def double_all(values):
        return fedcore.federated_map(double, values)

    assert str(double_all.type_signature) == "({int32}@CLIENTS -> {int32}@CLIENTS)"
    assert double_all([1, 2]) == [2, 4]
    assert double(21) == 42  # int32 again: already traced
    assert len(calls) == 1


# --------------------------------------------------------------------------
# Several Python parameters become one struct parameter.


def test_several_parameters_are_packed_into_one_struct():
    @fedcore.federated_computation(tf.int32, tf.float32)
    def swap(a, b):
        return b, a

    assert str(swap.type_signature) == "(<a=int32,b=float32> -> <float32,int32>)"
    assert swap.to_ir_string() == "(arg -> <arg.b,arg.a>)"
    assert swap(1, 2.0) == (2.0, 1)
    assert swap(a=1, b=2.0) == (2.0, 1)
    assert swap(b=2.0, a=1) == (2.0, 1)
    assert swap(1, b=2.0) == (2.0, 1)


def test_polymorphic_keyword_arguments_follow_the_python_signature():
    calls = []

    @fedcore.federated_computation
    def second(a, b):
        calls.append(1)
        return b

    assert second(b=2.5, a=1) == 2.5
    assert second(a=1, b=2.5) == 2.5
    assert second(1, 2.5) == 2.5
    assert len(calls) == 1  # all three calls have the parameter type <a=int32,b=float32>


def test_polymorphic_tf_keyword_arguments_follow_the_python_signature():
    @fedcore.tf_computation
    def scaled(value, factor):
        return value * tf.cast(factor, value.dtype)

    assert scaled(factor=3, value=2.5) == 7.5
    assert scaled(2.5, 3) == 7.5


def test_packed_tf_computation():
    @fedcore.tf_computation(tf.int32, tf.float32)
    def scale(n, factor):
        return tf.cast(n, tf.float32) * factor

    assert str(scale.type_signature) == "(<n=int32,factor=float32> -> float32)"
    assert scale(2, 1.5) == 3.0
    assert scale(factor=1.5, n=2) == 3.0


def test_packed_computation_called_while_tracing_with_keywords():
    @fedcore.tf_computation(tf.int32, tf.float32)
    def scale(n, factor):
        return tf.cast(n, tf.float32) * factor

    @fedcore.federated_computation(tf.float32, tf.int32)
    def use(f, n):
        return scale(factor=f, n=n)

    assert str(use.type_signature) == "(<f=float32,n=int32> -> float32)"
    assert "(<n=arg.n,factor=arg.f>)" in use.to_ir_string()
    assert use(1.5, 2) == 3.0


def test_struct_type_with_one_element_per_parameter_is_unpacked():
    @fedcore.federated_computation(collections.OrderedDict(a=tf.int32, b=tf.string))
    def f(a, b):
        return b

    assert str(f.type_signature) == "(<a=int32,b=string> -> string)"
    assert f(1, "x") == "x"


# --------------------------------------------------------------------------
# Containers: returned structures remember their Python type.


def test_returned_containers_become_structs_and_come_back_as_such():
    @fedcore.federated_computation(tf.int32)
    def containers(x):
        return [x, (x, x), {"a": x}, collections.OrderedDict(b=x), Point(x, x), Metrics(x, x)]

    result_type = containers.type_signature.result
    assert str(result_type) == "<int32,<int32,int32>,<a=int32>,<b=int32>,<x=int32,y=int32>,<loss=int32,num_examples=int32>>"
    assert result_type.container is list
    assert [getattr(t, "container", None) for t in result_type] == [None, tuple, dict, collections.OrderedDict, Point, Metrics]
    result = containers(3)
    assert type(result) is list
    assert result[0] == 3
    assert type(result[1]) is tuple and result[1] == (3, 3)
    assert type(result[2]) is dict and result[2] == {"a": 3}
    assert type(result[3]) is collections.OrderedDict and result[3] == collections.OrderedDict(b=3)
    assert type(result[4]) is Point and result[4] == Point(3, 3)
    assert type(result[5]) is Metrics and result[5] == Metrics(3, 3)


def test_parameter_containers_are_seen_by_tf_code_and_returned():
    @fedcore.tf_computation(Metrics(tf.float32, tf.int32))
    def halve(m):
        assert isinstance(m, Metrics)
        return Metrics(m.loss / 2, m.num_examples)

    assert str(halve.type_signature) == "(<loss=float32,num_examples=int32> -> <loss=float32,num_examples=int32>)"
    assert halve(Metrics(3.0, 4)) == Metrics(1.5, 4)


def test_federated_containers_survive_a_map():
    @fedcore.tf_computation(Point(tf.int32, tf.int32))
    def flip(p):
        return Point(p.y, p.x)

    @fedcore.federated_computation(fedcore.type_at_clients(Point(tf.int32, tf.int32)))
    def flip_all(points):
        return fedcore.federated_map(flip, points)

    assert flip_all([Point(1, 2), Point(3, 4)]) == [Point(2, 1), Point(4, 3)]


# --------------------------------------------------------------------------
# TensorFlow computations and datasets.


def test_tf_computation_infers_its_result_type():
    @fedcore.tf_computation(tf.int32)
    def stats(x):
        return collections.OrderedDict(twice=x * 2, as_float=tf.cast(x, tf.float32), items=tf.fill([3], x))

    assert str(stats.type_signature) == "(int32 -> <twice=int32,as_float=float32,items=int32[3]>)"
    assert stats.type_signature.result.container is collections.OrderedDict
    result = stats(4)
    assert list(result) == ["twice", "as_float", "items"]
    assert result["twice"] == 8 and result["as_float"] == 4.0
    np.testing.assert_array_equal(result["items"], [4, 4, 4])


def test_tf_computation_ir_is_a_tensorflow_node():
    @fedcore.tf_computation(tf.float32)
    def f(x):
        return x

    assert isinstance(f.ir, bb.TensorFlowComputation)
    assert f.to_ir_string() == f"comp#{f.ir.id}"


def test_dataset_parameter():
    @fedcore.tf_computation(tf.data.DatasetSpec(tf.TensorSpec([], tf.float32)))
    def total(ds):
        return ds.reduce(0.0, lambda a, b: a + b)

    assert str(total.type_signature) == "(float32* -> float32)"
    assert total(tf.data.Dataset.from_tensor_slices([1.0, 2.0, 3.5])) == 6.5
    assert total([1.0, 2.0]) == 3.0


def test_dataset_parameter_given_as_sequence_type_string():
    @fedcore.tf_computation("<x=float32,y=int32>*")
    def count_positive(ds):
        return ds.reduce(0, lambda n, e: n + tf.cast(e["x"] > 0, tf.int32) + 0 * e.y)

    assert str(count_positive.type_signature) == "(<x=float32,y=int32>* -> int32)"
    ds = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=[1.0, -1.0, 2.0], y=[0, 0, 0]))
    assert count_positive(ds) == 2


def test_dataset_result():
    @fedcore.tf_computation(tf.int64)
    def count_up(n):
        return tf.data.Dataset.range(n).map(lambda i: tf.cast(i, tf.float32))

    assert str(count_up.type_signature) == "(int64 -> float32*)"
    assert count_up(3) == [0.0, 1.0, 2.0]


def test_polymorphic_tf_computation_on_a_dataset():
    @fedcore.tf_computation
    def total(ds):
        return ds.reduce(np.int64(0), lambda a, b: a + b)

    assert total(tf.data.Dataset.range(5)) == 10


def test_federated_map_over_client_datasets():
    @fedcore.tf_computation(tf.data.DatasetSpec(tf.TensorSpec([], tf.float32)))
    def total(ds):
        return ds.reduce(0.0, lambda a, b: a + b)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.data.DatasetSpec(tf.TensorSpec([], tf.float32))))
    def totals(data):
        return fedcore.federated_map(total, data)

    assert str(totals.type_signature) == "({float32*}@CLIENTS -> {float32}@CLIENTS)"
    assert totals([[1.0, 2.0], tf.data.Dataset.from_tensor_slices([5.0])]) == [3.0, 5.0]


# --------------------------------------------------------------------------
# Selections on traced values.


def test_attribute_and_index_access_on_a_struct():
    @fedcore.federated_computation(collections.OrderedDict(loss=tf.float32, n=tf.int32))
    def pick(metrics):
        return metrics.loss, metrics[1], metrics["n"], metrics[-1]

    assert str(pick.type_signature) == "(<loss=float32,n=int32> -> <float32,int32,int32,int32>)"
    assert pick.to_ir_string() == "(metrics -> <metrics.loss,metrics.n,metrics.n,metrics.n>)"
    assert pick({"loss": 0.5, "n": 3}) == (0.5, 3, 3, 3)


def test_index_access_on_an_unnamed_struct():
    @fedcore.federated_computation([tf.int32, tf.string])
    def second(x):
        return x[1]

    assert second.to_ir_string() == "(x -> x[1])"
    assert second([1, "b"]) == "b"


def test_unpacking_a_traced_struct():
    @fedcore.federated_computation([tf.int32, tf.float32])
    def swap(x):
        a, b = x
        return b, a

    assert swap([1, 2.0]) == (2.0, 1)


def test_selection_on_a_federated_struct_at_clients_maps_the_selection():
    @fedcore.federated_computation(fedcore.type_at_clients(collections.OrderedDict(loss=tf.float32, n=tf.int32)))
    def total(metrics):
        return fedcore.federated_sum(metrics.n), fedcore.federated_mean(metrics[0])

    assert str(total.type_signature) == "({<loss=float32,n=int32>}@CLIENTS -> <int32@SERVER,float32@SERVER>)"
    assert total.to_ir_string() == (
        "(metrics -> (let fc1=federated_map(<(s -> s.n),metrics>),fc2=federated_sum(fc1),"
        "fc3=federated_map(<(s -> s.loss),metrics>),fc4=federated_mean(fc3) in <fc2,fc4>))"
    )
    assert total([{"loss": 1.0, "n": 2}, {"loss": 3.0, "n": 5}]) == (7, 2.0)


def test_selection_on_a_federated_struct_at_server_applies_the_selection():
    @fedcore.federated_computation(fedcore.type_at_server([tf.int32, tf.float32]))
    def second(x):
        return x[1]

    assert str(second.type_signature) == "(<int32,float32>@SERVER -> float32@SERVER)"
    assert second.to_ir_string() == "(x -> (let fc1=federated_apply(<(s -> s[1]),x>) in fc1))"
    assert second([1, 2.5]) == 2.5


def test_selection_on_an_all_equal_clients_struct():
    @fedcore.federated_computation(fedcore.type_at_clients(collections.OrderedDict(a=tf.int32), all_equal=True))
    def pick(x):
        return x.a

    assert str(pick.type_signature) == "(<a=int32>@CLIENTS -> int32@CLIENTS)"
    assert "federated_map_all_equal" in pick.to_ir_string()
    assert pick({"a": 3}) == 3


# --------------------------------------------------------------------------
# Computations calling computations.


def test_federated_computation_calls_federated_computation():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def total(x):
        return fedcore.federated_sum(x)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def total_and_broadcast(x):
        return fedcore.federated_broadcast(total(x))

    assert str(total_and_broadcast.type_signature) == "({int32}@CLIENTS -> int32@CLIENTS)"
    assert total_and_broadcast.to_ir_string() == (
        "(x -> (let fc1=(x -> (let fc1=federated_sum(x) in fc1))(x),fc2=federated_broadcast(fc1) in fc2))"
    )
    assert total_and_broadcast([1, 2, 3]) == 6


def test_federated_computation_calls_tf_computation_directly():
    @fedcore.tf_computation(tf.int32)
    def inc(x):
        return x + 1

    @fedcore.federated_computation(tf.int32)
    def twice(x):
        return inc(inc(x))

    cid = inc.ir.id
    assert twice.to_ir_string() == f"(x -> (let fc1=comp#{cid}(x),fc2=comp#{cid}(fc1) in fc2))"
    assert twice(1) == 3


def test_tf_computation_calls_tf_computation_inside_tf_code():
    @fedcore.tf_computation(tf.int32)
    def inc(x):
        return x + 1

    @fedcore.tf_computation
    def double(x):
        return x * 2

    @fedcore.tf_computation(tf.int32)
    def combined(x):
        y = inc(inc(x))
        if y > 3:  # AutoGraph still converts the user's own code
            y = y * 10
        return double(y)

    assert str(combined.type_signature) == "(int32 -> int32)"
    assert isinstance(combined.ir, bb.TensorFlowComputation)
    assert combined(1) == 6
    assert combined(2) == 80


def test_tf_calling_tf_does_not_make_autograph_convert_fedcore(monkeypatch):
    # A computation called from TF code must run as plain Python: if AutoGraph converted
    # Computation.__call__, it would also convert (and warn about) everything it calls.
    from fedcore.compiler import computation

    seen = []
    original = computation.call_inside_tf

    def spy(comp, args, kwargs):
        seen.append(sys._getframe(0).f_code.co_filename)
        return original(comp, args, kwargs)

    monkeypatch.setattr(computation, "call_inside_tf", spy)
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:

        @fedcore.tf_computation(collections.OrderedDict(a=tf.int32, b=tf.int32))
        def add(pair):
            return pair["a"] + pair["b"]

        @fedcore.tf_computation(tf.int32)
        def use(x):
            return add(collections.OrderedDict(a=x, b=x))

        assert use(2) == 4
    finally:
        logger.removeHandler(handler)
    assert seen == [__file__]  # not an __autograph_generated_file
    assert not [r for r in records if "AutoGraph" in r]


def test_tf_computation_called_inside_tf_with_wrong_structure():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    with pytest.raises(TypeError, match="add expects 2 arguments"):

        @fedcore.tf_computation(tf.int32)
        def use(x):
            return add(x)


def test_federated_computation_cannot_be_called_from_tf_code():
    @fedcore.federated_computation(tf.int32)
    def ident(x):
        return x

    with pytest.raises(TypeError, match="federated computation"):

        @fedcore.tf_computation(tf.int32)
        def use(x):
            return ident(x)


# --------------------------------------------------------------------------
# Printing.


def test_type_signature_and_repr():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32), fedcore.type_at_server(tf.float32))
    def shift(readings, offset):
        return fedcore.federated_mean(readings), offset

    assert str(shift.type_signature) == (
        "(<readings={float32}@CLIENTS,offset=float32@SERVER> -> <float32@SERVER,float32@SERVER>)"
    )
    assert repr(shift) == f"<fedcore.Computation shift: {shift.type_signature}>"


def test_to_ir_string_compact_and_formatted():
    @fedcore.tf_computation(tf.float32)
    def add_half(x):
        return x + 0.5

    @fedcore.federated_computation("{float32}@CLIENTS")
    def pipeline(x):
        shifted = fedcore.federated_map(add_half, x)
        mean = fedcore.federated_mean(shifted)
        return fedcore.federated_broadcast(mean)

    cid = add_half.ir.id
    assert str(pipeline.type_signature) == "({float32}@CLIENTS -> float32@CLIENTS)"
    assert pipeline.to_ir_string() == (
        f"(x -> (let fc1=federated_map(<comp#{cid},x>),fc2=federated_mean(fc1),fc3=federated_broadcast(fc2) in fc3))"
    )
    assert pipeline.to_ir_string(formatted=True) == "\n".join(
        [
            "(x -> (let",
            f"  fc1=federated_map(<comp#{cid},x>),",
            "  fc2=federated_mean(fc1),",
            "  fc3=federated_broadcast(fc2)",
            "in fc3))",
        ]
    )
    assert pipeline([1.0, 2.0]) == 2.0


def test_traced_nodes_record_the_user_source_line():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def average(x):
        return fedcore.federated_mean(x)  # the line recorded below

    call = average.ir.result.locals[0][1]
    assert isinstance(call, bb.Call)
    assert call.source.filename == __file__
    assert call.source.function == "average"
    with open(__file__) as f:
        assert "the line recorded below" in f.read().splitlines()[call.source.lineno - 1]

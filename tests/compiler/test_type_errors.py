"""Type errors found while tracing: a FederatedTypeError (a TypeError) that names
what was called, the expected and the actual types in the notation, and the file
and line of the offending call in the user's function.

Each offending line below carries a ``# ERROR:`` marker; the tests look the
line number up by that marker, so the assertions name exact lines.
"""

import collections
import os

import pytest
import tensorflow as tf

import fedcore

with open(__file__) as _f:
    _SOURCE_LINES = _f.read().splitlines()


def line_of(marker: str) -> int:
    """The 1-based line number of the line ending in ``# ERROR: <marker>``."""
    hits = [i + 1 for i, line in enumerate(_SOURCE_LINES) if line.rstrip().endswith(f"# ERROR: {marker}")]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
    return hits[0]


def assert_located(message: str, marker: str, function: str) -> None:
    assert os.path.basename(__file__) in message
    assert f"{__file__}:{line_of(marker)} in {function}" in message, message


def trace_error(build) -> fedcore.FederatedTypeError:
    """Runs ``build`` and returns the FederatedTypeError it raises."""
    with pytest.raises(TypeError) as info:
        build()
    error = info.value
    assert isinstance(error, fedcore.FederatedTypeError), repr(error)
    assert not isinstance(error, (AttributeError, KeyError, IndexError))
    return error


@fedcore.tf_computation(tf.int32)
def increment(x):
    return x + 1


@fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
def total(x):
    return fedcore.federated_sum(x)


METRICS = collections.OrderedDict(loss=tf.float32, num_examples=tf.int32)


def test_federated_type_error_is_a_type_error():
    assert issubclass(fedcore.FederatedTypeError, TypeError)


def test_federated_mean_of_a_server_value():
    def build():
        @fedcore.federated_computation(fedcore.type_at_server(tf.float32))
        def average(x):
            return fedcore.federated_mean(x)  # ERROR: mean-at-server

    message = str(trace_error(build))
    assert "federated_mean" in message
    assert "{T}@CLIENTS" in message  # expected
    assert "float32@SERVER" in message  # actual
    assert_located(message, "mean-at-server", "average")


def test_federated_map_with_a_function_of_the_wrong_parameter_type():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def bump(x):
            return fedcore.federated_map(increment, x)  # ERROR: map-wrong-fn

    message = str(trace_error(build))
    assert "federated_map" in message
    assert "<(T -> U),{T}@CLIENTS>" in message
    assert "<(int32 -> int32),{float32}@CLIENTS>" in message
    assert_located(message, "map-wrong-fn", "bump")


def test_federated_sum_of_strings():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.string))
        def concat(x):
            return fedcore.federated_sum(x)  # ERROR: sum-strings

    message = str(trace_error(build))
    assert "federated_sum" in message
    assert "numeric" in message
    assert "{T}@CLIENTS" in message
    assert "{string}@CLIENTS" in message
    assert_located(message, "sum-strings", "concat")


def test_federated_mean_weighted_by_strings():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32), fedcore.type_at_clients(tf.string))
        def weighted(x, w):
            return fedcore.federated_mean(x, w)  # ERROR: weight-strings

    message = str(trace_error(build))
    assert "federated_mean" in message and "weight" in message
    assert "<{float32}@CLIENTS,{string}@CLIENTS>" in message
    assert_located(message, "weight-strings", "weighted")


def test_calling_a_computation_with_a_wrong_typed_value():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def caller(x):
            return total(x)  # ERROR: wrong-arg

    message = str(trace_error(build))
    assert "total" in message
    assert "expects an argument of type {int32}@CLIENTS, got {float32}@CLIENTS" in message
    assert_located(message, "wrong-arg", "caller")


def test_calling_a_tf_computation_with_a_wrong_typed_value():
    def build():
        @fedcore.federated_computation(tf.string)
        def caller(s):
            return increment(s)  # ERROR: wrong-tf-arg

    message = str(trace_error(build))
    assert "increment expects an argument of type int32, got string" in message
    assert_located(message, "wrong-tf-arg", "caller")


def test_calling_a_packed_computation_with_too_few_arguments():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    def build():
        @fedcore.federated_computation(tf.int32)
        def caller(x):
            return add(x)  # ERROR: too-few

    message = str(trace_error(build))
    assert "add expects 2 arguments" in message and "<a=int32,b=int32>" in message
    assert_located(message, "too-few", "caller")


def test_selecting_a_missing_name():
    def build():
        @fedcore.federated_computation(METRICS)
        def pick(x):
            return x.nope  # ERROR: missing-name

    message = str(trace_error(build))
    assert "'nope'" in message
    assert "<loss=float32,num_examples=int32>" in message
    assert_located(message, "missing-name", "pick")


def test_selecting_a_missing_name_by_key():
    def build():
        @fedcore.federated_computation(METRICS)
        def pick(x):
            return x["nope"]  # ERROR: missing-key

    message = str(trace_error(build))
    assert "'nope'" in message and "<loss=float32,num_examples=int32>" in message
    assert_located(message, "missing-key", "pick")


def test_selecting_a_missing_name_on_a_federated_struct():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(METRICS))
        def pick(x):
            return fedcore.federated_sum(x.nope)  # ERROR: missing-name-federated

    message = str(trace_error(build))
    assert "'nope'" in message and "<loss=float32,num_examples=int32>" in message
    assert_located(message, "missing-name-federated", "pick")


def test_index_out_of_range():
    def build():
        @fedcore.federated_computation([tf.int32, tf.int32])
        def pick(x):
            return x[5]  # ERROR: index-range

    message = str(trace_error(build))
    assert "index 5 is out of range" in message
    assert "<int32,int32>" in message
    assert_located(message, "index-range", "pick")


def test_index_out_of_range_on_a_federated_struct():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients([tf.int32]))
        def pick(x):
            return x[5]  # ERROR: index-range-federated

    message = str(trace_error(build))
    assert "index 5 is out of range" in message and "<int32>" in message
    assert_located(message, "index-range-federated", "pick")


def test_selecting_from_a_non_struct():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
        def pick(x):
            return x.loss  # ERROR: select-non-struct

    message = str(trace_error(build))
    assert "{int32}@CLIENTS" in message and "not a struct" in message
    assert_located(message, "select-non-struct", "pick")


@pytest.mark.parametrize("operation", ["add", "radd", "mul", "truediv", "neg", "lt"])
def test_arithmetic_on_traced_values(operation):
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
        def arith(x):
            ops = {
                "add": lambda: x + 1.0,
                "radd": lambda: 1.0 + x,
                "mul": lambda: x * x,
                "truediv": lambda: x / 2.0,
                "neg": lambda: -x,
                "lt": lambda: x < 0.0,
            }
            return ops[operation]()  # ERROR: arithmetic

    message = str(trace_error(build))
    assert "arithmetic" in message
    assert "{float32}@CLIENTS" in message
    assert "tf_computation" in message  # says what to do instead
    # The innermost user frame is the lambda on the line of the operation; its function
    # name is "<lambda>".  The file is always ours.
    assert os.path.basename(__file__) in message


def test_arithmetic_location_is_the_line_of_the_operation():
    def build():
        @fedcore.federated_computation(tf.int32)
        def plus_one(x):
            return x + 1  # ERROR: plus-one

    message = str(trace_error(build))
    assert "int32" in message
    assert_located(message, "plus-one", "plus_one")


def test_truth_value_of_a_traced_value():
    def build():
        @fedcore.federated_computation(tf.bool)
        def branch(x):
            if x:  # ERROR: if-traced
                return 1
            return 2

    message = str(trace_error(build))
    assert "truth value" in message and "bool" in message
    assert_located(message, "if-traced", "branch")


def test_iterating_a_non_struct_traced_value():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
        def unpack(x):
            a, b = x  # ERROR: unpack
            return a

    message = str(trace_error(build))
    assert "{int32}@CLIENTS" in message
    assert_located(message, "unpack", "unpack")


def test_broadcasting_a_clients_value():
    def build():
        @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
        def send(x):
            return fedcore.federated_broadcast(x)  # ERROR: broadcast-clients

    message = str(trace_error(build))
    assert "federated_broadcast" in message and "T@SERVER" in message and "{int32}@CLIENTS" in message
    assert_located(message, "broadcast-clients", "send")


def test_intrinsic_on_an_unplaced_value():
    def build():
        @fedcore.federated_computation(tf.int32)
        def summed(x):
            return fedcore.federated_sum(x)  # ERROR: unplaced

    message = str(trace_error(build))
    assert "federated_sum expects a federated value" in message and "int32" in message
    assert_located(message, "unplaced", "summed")


def test_returning_none():
    def build():
        @fedcore.federated_computation(tf.int32)
        def nothing(x):
            fedcore.federated_value(x, fedcore.SERVER)

    message = str(trace_error(build))
    assert "nothing returned None" in message


def test_using_a_plain_python_value_that_is_not_a_type():
    def build():
        @fedcore.federated_computation(tf.int32)
        def returns_object(x):
            return object()  # ERROR: bad-result

    message = str(trace_error(build))
    assert "object" in message
    assert os.path.basename(__file__) in message


@pytest.mark.parametrize(
    "call",
    [
        lambda: fedcore.federated_sum([1, 2]),
        lambda: fedcore.federated_mean(1.0),
        lambda: fedcore.federated_map(increment, [1, 2]),
        lambda: fedcore.federated_broadcast(3),
        lambda: fedcore.federated_value(3, fedcore.SERVER),
        lambda: fedcore.federated_zip([1, 2]),
        lambda: fedcore.federated_eval(increment, fedcore.SERVER),
        lambda: fedcore.sequence_sum([1, 2]),
    ],
    ids=["sum", "mean", "map", "broadcast", "value", "zip", "eval", "sequence_sum"],
)
def test_intrinsic_outside_a_federated_computation(call):
    with pytest.raises(RuntimeError, match="only be used while tracing a federated_computation"):
        call()


def test_intrinsic_inside_tf_code_is_refused():
    with pytest.raises(RuntimeError, match="only be used while tracing a federated_computation"):

        @fedcore.tf_computation(tf.int32)
        def bad(x):
            return fedcore.federated_sum(x)


def test_wrong_typed_value_at_run_time_is_an_argument_error():
    with pytest.raises(fedcore.ArgumentError) as info:
        total([1.5, 2.0])
    assert isinstance(info.value, TypeError)
    assert "int32" in str(info.value) and "1.5" in str(info.value)

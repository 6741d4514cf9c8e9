"""The reference interpreter: results, containers, the number of clients, and
switching executors."""

import collections
import math

import attrs
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.runtime import ExecutionError
from fedcore.types import CLIENTS, FederatedType, FunctionType, StructType, TensorType

Point = collections.namedtuple("Point", ["x", "y"])


@pytest.fixture(autouse=True)
def on_the_reference_interpreter():
    """These are the reference interpreter's tests: here it is the default executor."""
    before = fedcore.get_default_executor()
    fedcore.set_default_executor(fedcore.ReferenceExecutor())
    yield
    fedcore.set_default_executor(before)


@attrs.define
class Pair:
    first: int
    second: str


@fedcore.tf_computation(tf.int32)
def increment(x):
    return x + 1


@fedcore.tf_computation(tf.int32, tf.int32)
def add(a, b):
    return a + b


# --------------------------------------------------------------------------
# The canonical examples.


def test_average_temperature():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def get_average_temperature(sensor_readings):
        return fedcore.federated_mean(sensor_readings)

    assert str(get_average_temperature.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    result = get_average_temperature([68.5, 70.3, 69.8])
    assert result == pytest.approx(69.5333, abs=1e-4)
    assert isinstance(result, np.float32)


def test_tutorial_metrics_aggregation():
    metrics_type = fedcore.type_at_clients(
        collections.OrderedDict(num_examples=tf.int32, loss=tf.float32, accuracy=tf.float32)
    )

    @fedcore.federated_computation(metrics_type)
    def aggregate_metrics(metrics):
        return collections.OrderedDict(
            num_examples=fedcore.federated_sum(metrics.num_examples),
            loss=fedcore.federated_mean(metrics.loss, metrics.num_examples),
            accuracy=fedcore.federated_mean(metrics.accuracy, metrics.num_examples),
        )

    assert str(aggregate_metrics.type_signature) == (
        "({<num_examples=int32,loss=float32,accuracy=float32>}@CLIENTS -> "
        "<num_examples=int32@SERVER,loss=float32@SERVER,accuracy=float32@SERVER>)"
    )
    assert aggregate_metrics.to_ir_string().count("federated_weighted_mean") == 2
    result = aggregate_metrics(
        [
            collections.OrderedDict(num_examples=2, loss=1.0, accuracy=0.5),
            collections.OrderedDict(num_examples=6, loss=3.0, accuracy=0.9),
            collections.OrderedDict(num_examples=2, loss=2.0, accuracy=0.1),
        ]
    )
    assert type(result) is collections.OrderedDict
    assert list(result) == ["num_examples", "loss", "accuracy"]
    assert result["num_examples"] == 10
    assert result["loss"] == pytest.approx((2 * 1.0 + 6 * 3.0 + 2 * 2.0) / 10)
    assert result["accuracy"] == pytest.approx((2 * 0.5 + 6 * 0.9 + 2 * 0.1) / 10)


# --------------------------------------------------------------------------
# Results come back in their declared containers, strings as str.


def test_results_in_declared_containers():
    @fedcore.federated_computation(tf.int32, tf.string)
    def build(n, s):
        return [n, (n, s), {"n": n}, collections.OrderedDict(s=s), Point(n, n), Pair(n, s)]

    result = build(4, "four")
    assert type(result) is list
    assert result[0] == 4 and isinstance(result[0], np.int32)
    assert type(result[1]) is tuple and result[1] == (4, "four")
    assert type(result[2]) is dict and result[2] == {"n": 4}
    assert type(result[3]) is collections.OrderedDict and result[3] == {"s": "four"}
    assert type(result[4]) is Point and result[4] == Point(4, 4)
    assert type(result[5]) is Pair and result[5] == Pair(4, "four")


def test_struct_without_container_comes_back_as_a_struct():
    @fedcore.federated_computation("<a=int32,b=string>")
    def ident(x):
        return x

    result = ident({"a": 1, "b": "x"})
    assert isinstance(result, fedcore.Struct)
    assert result.a == 1 and result.b == "x"


def test_strings_come_back_as_str():
    @fedcore.tf_computation(tf.string)
    def shout(s):
        return tf.strings.upper(s)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.string))
    def shout_all(words):
        return fedcore.federated_map(shout, words)

    result = shout_all(["hi", b"there"])
    assert result == ["HI", "THERE"]
    assert all(type(w) is str for w in result)
    assert type(shout("a")) is str


def test_string_tensors_come_back_as_arrays_of_str():
    @fedcore.tf_computation
    def words():
        return tf.constant(["a", "b"])

    result = words()
    assert isinstance(result, np.ndarray) and result.shape == (2,)
    assert [type(w) for w in result] == [str, str]
    assert list(result) == ["a", "b"]


def test_federated_value_of_a_string():
    @fedcore.federated_computation
    def greet():
        return fedcore.federated_value("hello", fedcore.SERVER)

    assert str(greet.type_signature) == "( -> string@SERVER)"
    assert greet() == "hello" and type(greet()) is str


def test_clients_results_are_lists():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def bump(x):
        return fedcore.federated_map(increment, x)

    result = bump([1, 2, 3])
    assert result == [2, 3, 4]
    assert type(result) is list and all(isinstance(v, np.int32) for v in result)


# --------------------------------------------------------------------------
# Intrinsic semantics.


def test_federated_sum_min_max_of_structs():
    @fedcore.federated_computation(fedcore.type_at_clients(collections.OrderedDict(a=tf.int32, b=(tf.float32, [2]))))
    def stats(x):
        return fedcore.federated_sum(x), fedcore.federated_min(x), fedcore.federated_max(x)

    values = [{"a": 1, "b": [1.0, 5.0]}, {"a": 4, "b": [3.0, -1.0]}]
    total, low, high = stats(values)
    assert total["a"] == 5 and np.allclose(total["b"], [4.0, 4.0])
    assert low["a"] == 1 and np.allclose(low["b"], [1.0, -1.0])
    assert high["a"] == 4 and np.allclose(high["b"], [3.0, 5.0])


def test_aggregates_over_zero_clients():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def stats(x):
        return fedcore.federated_sum(x), fedcore.federated_mean(x), fedcore.federated_min(x), fedcore.federated_max(x)

    total, mean, low, high = stats([])
    assert total == 0.0
    assert math.isnan(mean)
    assert low == np.inf and high == -np.inf


def test_broadcast_then_map_then_sum():
    @fedcore.federated_computation(fedcore.type_at_server(tf.int32), fedcore.type_at_clients(tf.int32))
    def offset_total(offset, values):
        shifted = fedcore.federated_map(add, fedcore.federated_zip([fedcore.federated_broadcast(offset), values]))
        return fedcore.federated_sum(shifted)

    assert offset_total(10, [1, 2, 3]) == 36


def test_federated_apply_and_value_at_clients():
    @fedcore.federated_computation(fedcore.type_at_server(tf.int32))
    def f(x):
        everyone = fedcore.federated_value(5, fedcore.CLIENTS)
        return fedcore.federated_apply(increment, x), fedcore.federated_sum(everyone)

    with fedcore.execution_context(fedcore.ReferenceExecutor(num_clients=4)):
        assert f(1) == (2, 20)


def test_federated_zip_at_server():
    @fedcore.federated_computation(fedcore.type_at_server(tf.int32), fedcore.type_at_server(tf.string))
    def zipped(a, b):
        return fedcore.federated_zip(collections.OrderedDict(n=a, s=b))

    assert str(zipped.type_signature) == "(<a=int32@SERVER,b=string@SERVER> -> <n=int32,s=string>@SERVER)"
    assert zipped(1, "x") == collections.OrderedDict(n=1, s="x")


def test_federated_aggregate():
    @fedcore.tf_computation((tf.int32, tf.int32), tf.int32)
    def accumulate(acc, v):
        return (acc[0] + v, acc[1] + 1)

    @fedcore.tf_computation((tf.int32, tf.int32), (tf.int32, tf.int32))
    def merge(a, b):
        return (a[0] + b[0], a[1] + b[1])

    @fedcore.tf_computation((tf.int32, tf.int32))
    def report(acc):
        return tf.cast(acc[0], tf.float32) / tf.cast(acc[1], tf.float32)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def mean(x):
        return fedcore.federated_aggregate(x, (0, 0), accumulate, merge, report)

    assert str(mean.type_signature) == "({int32}@CLIENTS -> float32@SERVER)"
    assert mean([1, 2, 6]) == pytest.approx(3.0)


def test_federated_secure_sum_checks_bounds():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 10)

    assert secure([3, 4]) == 7
    with pytest.raises(ExecutionError, match="client 1 gave 11"):
        secure([3, 11])


def test_sequence_intrinsics():
    @fedcore.federated_computation(tf.data.DatasetSpec(tf.TensorSpec([], tf.int32)))
    def seq(s):
        return fedcore.sequence_sum(s), fedcore.sequence_map(increment, s), fedcore.sequence_reduce(s, 0, add)

    assert str(seq.type_signature) == "(int32* -> <int32,int32*,int32>)"
    assert seq([1, 2, 3]) == (6, [2, 3, 4], 6)
    assert seq(tf.data.Dataset.from_tensor_slices([5, 5])) == (10, [6, 6], 10)


def test_federated_mean_of_client_dataset_averages():
    @fedcore.tf_computation(tf.data.DatasetSpec(tf.TensorSpec([], tf.float32)))
    def local_mean(ds):
        total, count = ds.reduce((0.0, 0.0), lambda acc, v: (acc[0] + v, acc[1] + 1.0))
        return total / count

    @fedcore.federated_computation(fedcore.type_at_clients(tf.data.DatasetSpec(tf.TensorSpec([], tf.float32))))
    def mean_of_means(data):
        return fedcore.federated_mean(fedcore.federated_map(local_mean, data))

    assert mean_of_means([[1.0, 3.0], tf.data.Dataset.from_tensor_slices([10.0])]) == pytest.approx(6.0)


def test_generic_plus_and_zero_on_hand_built_ir():
    s = StructType([("a", TensorType("int32")), ("b", TensorType("float32", [2]))])
    plus = bb.Intrinsic("generic_plus", FunctionType(StructType([(None, s), (None, s)]), s))
    zero = bb.Intrinsic("generic_zero", s)
    x = bb.Reference("x", s)
    body = bb.Struct([(None, bb.Call(plus, bb.Struct([(None, x), (None, x)]))), (None, zero)])
    comp = fedcore.Computation(bb.Lambda("x", s, body), "plus_and_zero")
    doubled, zeros = comp({"a": 2, "b": [1.0, 1.5]})
    assert doubled.a == 4 and np.allclose(doubled.b, [2.0, 3.0])
    assert zeros.a == 0 and np.allclose(zeros.b, [0.0, 0.0])


def test_data_nodes_read_from_the_executor():
    t = FederatedType(TensorType("int32"), CLIENTS)
    comp = fedcore.Computation(bb.Lambda(None, None, bb.Data("train", t)), "read")
    executor = fedcore.ReferenceExecutor(data={"train": [np.int32(1), np.int32(2)]})
    with fedcore.execution_context(executor):
        assert comp() == [1, 2]
    with pytest.raises(ExecutionError, match="data#train"):
        comp()


# --------------------------------------------------------------------------
# The number of clients.


def _eval_at_clients():
    @fedcore.tf_computation
    def one():
        return tf.constant(1)

    @fedcore.federated_computation
    def everyone():
        return fedcore.federated_eval(one, fedcore.CLIENTS)

    return everyone


def test_num_clients_inferred_from_the_argument():
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def count(x):
        return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS)), fedcore.federated_sum(x)

    assert count([5, 5, 5]) == (3, 15)
    assert count([5]) == (1, 5)
    # The argument wins over a configured count.
    with fedcore.execution_context(fedcore.ReferenceExecutor(num_clients=7)):
        assert count([5, 5]) == (2, 10)


def test_num_clients_inferred_from_a_nested_argument():
    @fedcore.federated_computation(
        collections.OrderedDict(weights=fedcore.type_at_server(tf.float32), data=fedcore.type_at_clients(tf.float32))
    )
    def count(arg):
        return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))

    assert count({"weights": 1.0, "data": [1.0, 2.0, 3.0, 4.0]}) == 4


def test_num_clients_set_explicitly():
    everyone = _eval_at_clients()
    assert str(everyone.type_signature) == "( -> {int32}@CLIENTS)"
    with fedcore.execution_context(fedcore.ReferenceExecutor(num_clients=3)):
        assert everyone() == [1, 1, 1]
    with fedcore.execution_context(fedcore.ReferenceExecutor(num_clients=0)):
        assert everyone() == []


def test_num_clients_that_cannot_be_inferred_is_a_clear_error():
    everyone = _eval_at_clients()
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        with pytest.raises(ExecutionError, match=r"number of clients cannot be inferred.*num_clients=N"):
            everyone()


def test_server_only_argument_does_not_say_how_many_clients():
    @fedcore.federated_computation(fedcore.type_at_server(tf.int32))
    def spread(x):
        return fedcore.federated_broadcast(x), fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))

    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        with pytest.raises(ExecutionError, match="number of clients"):
            spread(3)
    with fedcore.execution_context(fedcore.ReferenceExecutor(num_clients=2)):
        assert spread(3) == (3, 2)


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_num_clients_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="num_clients"):
        fedcore.ReferenceExecutor(num_clients=bad)


# --------------------------------------------------------------------------
# Choosing the executor.


class RecordingExecutor:
    """Wraps an executor and records every computation it runs."""

    def __init__(self, inner=None):
        self.inner = inner or fedcore.ReferenceExecutor()
        self.calls = []

    def execute(self, comp, argument, num_clients=None):
        self.calls.append((comp.name, argument, num_clients))
        return self.inner.execute(comp, argument, num_clients=num_clients)


@fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
def summed(x):
    return fedcore.federated_sum(x)


@pytest.fixture
def restore_default_executor():
    before = fedcore.get_default_executor()
    yield
    fedcore.set_default_executor(before)


def test_the_default_executor_falls_back_on_the_reference_interpreter(restore_default_executor):
    # The default runs on the TF executor, and on the reference what that cannot run (test_default_executor.py).
    fedcore.set_default_executor(None)
    default = fedcore.get_default_executor()
    assert isinstance(default, fedcore.runtime.FallbackExecutor)
    assert isinstance(default.fallback, fedcore.ReferenceExecutor)


def test_set_default_executor(restore_default_executor):
    recorder = RecordingExecutor()
    fedcore.set_default_executor(recorder)
    assert fedcore.get_default_executor() is recorder
    assert summed([1, 2, 3]) == 6
    assert len(recorder.calls) == 1
    name, argument, num_clients = recorder.calls[0]
    assert name == "summed" and num_clients == 3
    # The executor gets the canonical argument: one numpy value per client.
    assert [a.dtype for a in argument] == [np.int32] * 3
    fedcore.set_default_executor(None)
    assert summed([1]) == 1
    assert len(recorder.calls) == 1


def test_execution_context_switches_and_restores(restore_default_executor):
    default, inner, outer = RecordingExecutor(), RecordingExecutor(), RecordingExecutor()
    fedcore.set_default_executor(default)
    with fedcore.execution_context(outer) as entered:
        assert entered is outer
        assert summed([1, 1]) == 2
        with fedcore.execution_context(inner):
            assert summed([1, 1, 1]) == 3
        assert summed([2]) == 2
    assert summed([4]) == 4
    assert [c[2] for c in outer.calls] == [2, 1]
    assert [c[2] for c in inner.calls] == [3]
    assert [c[2] for c in default.calls] == [1]


def test_execution_context_is_left_on_errors(restore_default_executor):
    default, failing = RecordingExecutor(), RecordingExecutor()
    fedcore.set_default_executor(default)
    with pytest.raises(RuntimeError, match="boom"):
        with fedcore.execution_context(failing):
            raise RuntimeError("boom")
    summed([1])
    assert len(default.calls) == 1 and not failing.calls


def test_nested_calls_while_tracing_do_not_execute(restore_default_executor):
    recorder = RecordingExecutor()
    fedcore.set_default_executor(recorder)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def outer(x):
        return summed(x)

    assert not recorder.calls  # tracing runs nothing
    assert outer([1, 2]) == 3
    assert [c[0] for c in recorder.calls] == ["outer"]


def test_objects_without_execute_are_refused():
    with pytest.raises(TypeError, match="execute"):
        fedcore.set_default_executor(object())
    with pytest.raises(TypeError, match="execute"):
        with fedcore.execution_context("not an executor"):
            pass

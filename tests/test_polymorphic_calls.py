"""How a polymorphic computation's call binds to its Python parameters: defaults, keywords,
keyword-only parameters and ``*args``, on the reference and TF executors; and the clear errors
for what cannot be bound (ragged data, a computation that calls itself)."""

from __future__ import annotations

import pytest
import tensorflow as tf

import fedcore
from fedcore.compiler.context import FederatedTypeError
from fedcore.runtime import tensorflow as tf_runtime
from fedcore.runtime.values import ArgumentError


@pytest.fixture(params=["reference", "tensorflow"])
def executor(request):
    if request.param == "reference":
        yield
    else:
        with fedcore.execution_context(tf_runtime.TensorFlowExecutor()):
            yield


@fedcore.tf_computation
def scale(x, factor=2.0):
    return x * factor


@fedcore.tf_computation
def affine(x, a=1.0, b=10.0):
    return x * a + b


@fedcore.tf_computation
def keyword_only(x, *, k):
    return x * k


@fedcore.tf_computation
def first(*xs):
    return xs[0]


def test_a_parameter_left_out_takes_its_python_default(executor):
    assert scale(3.0) == 6.0
    assert scale(3.0, 4.0) == 12.0
    assert scale(3.0, factor=5.0) == 15.0
    assert scale(x=3.0) == 6.0


def test_keywords_after_a_skipped_default_go_to_their_parameters(executor):
    assert affine(2.0, b=1.0) == 3.0  # a keeps its default 1.0
    assert affine(2.0, a=3.0) == 16.0
    assert affine(2.0, 3.0, 4.0) == 10.0
    assert affine(b=0.0, x=2.0, a=5.0) == 10.0


def test_defaults_apply_in_federated_and_tf_tracing(executor):
    @fedcore.federated_computation(fedcore.type_at_server(tf.float32))
    def doubled_at_server(x):
        return fedcore.federated_map(scale, x)

    @fedcore.tf_computation(tf.float32)
    def doubled_in_tf(x):
        return scale(x) + scale(x, factor=1.0)

    assert doubled_at_server(4.0) == 8.0
    assert doubled_in_tf(4.0) == 12.0


def test_keyword_only_parameters_are_filled_by_keyword(executor):
    assert keyword_only(3.0, k=2.0) == 6.0


def test_a_missing_keyword_only_argument_is_named():
    with pytest.raises(FederatedTypeError, match="'k'"):
        keyword_only(3.0)


def test_declared_types_cannot_fill_a_keyword_only_parameter_and_say_so():
    with pytest.raises(TypeError, match=r"keyword-only parameters \['k'\]"):
        fedcore.tf_computation(tf.float32, tf.float32)(lambda x, *, k: x * k)


def test_star_args_receive_one_struct_argument_whole(executor):
    assert first((1.0, 2.0)) == (1.0, 2.0)
    assert first(1.0, 2.0) == 1.0


@pytest.mark.parametrize("kind", ["polymorphic", "declared"])
def test_a_ragged_dataset_is_refused_as_ragged(kind):
    ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1, 2], [3]]))
    if kind == "polymorphic":
        comp = fedcore.tf_computation(lambda d: d.reduce(0, lambda a, b: a + tf.reduce_sum(b)))
    else:
        comp = fedcore.tf_computation(fedcore.SequenceType((tf.int32, [None])))(
            lambda d: d.reduce(0, lambda a, b: a + tf.reduce_sum(b))
        )
    with pytest.raises(ArgumentError, match="ragged tensors are not supported"):
        comp(ds)


@pytest.mark.parametrize("kind", ["tf", "federated"])
def test_a_computation_that_calls_itself_without_end_is_a_clear_error(kind):
    decorator = fedcore.tf_computation if kind == "tf" else fedcore.federated_computation

    @decorator
    def forever(x):
        return forever(x)

    with pytest.raises(TypeError, match="calls itself while it is being traced, at the same parameter type float32"):
        forever(1.0)

    @decorator
    def deeper(x):
        return deeper((x,))

    with pytest.raises(TypeError, match="MAX_SELF_CALLS=8"):
        deeper(1.0)


def test_a_computation_may_call_itself_at_a_smaller_type():
    @fedcore.tf_computation
    def leftmost(x):
        return leftmost(x[0]) if isinstance(x, tuple) else x

    assert leftmost(((1.0, 2.0), 3.0)) == 1.0

"""Numbers never change silently: a value is kept exactly, or refused with an error naming it.

Arguments and constants that do not fit their dtype, masked arrays and strings that are not
valid Unicode are ArgumentErrors; integer sums are exact or an ExecutionError on every executor
(never wrapped around); complex means keep their imaginary part.  The Ray executor's overflow
test is in tests/runtime/test_ray_executor.py, beside its worker pool.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedcore
from fedcore.runtime import tensorflow as tf_runtime
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.values import ArgumentError

EXECUTORS = {
    "reference": None,
    "tensorflow": lambda: tf_runtime.TensorFlowExecutor(),
    "tensorflow-sequential": lambda: tf_runtime.TensorFlowExecutor(strategy="sequential"),
}


def run(executor, fn, *args):
    if executor is None:
        return fn(*args)
    with fedcore.execution_context(executor()):
        return fn(*args)


def identity(dtype):
    return fedcore.tf_computation(dtype)(lambda x: x)


# --------------------------------------------------------------------------
# Arguments.

ARGUMENTS = [
    ("finite float too large for float32", tf.float32, 1e300, ["1e+300", "float32", "does not fit", "inf"]),
    ("finite float too large for float16", tf.float16, 70000.0, ["70000.0", "float16", "does not fit"]),
    ("int too large for float16", tf.float16, 70000, ["70000", "float16", "does not fit"]),
    ("huge Python int for float32", tf.float32, 2**200, [str(2**200)[:30], "float32", "does not fit"]),
    ("float too large for int32", tf.int32, 1e20, ["1e+20", "int32", "does not fit", "range"]),
    ("NaN for int32", tf.int32, float("nan"), ["nan", "int32", "not finite"]),
    ("inf for int64", tf.int64, float("inf"), ["inf", "int64", "not finite"]),
    ("2**63 for int64", tf.int64, 2**63, [str(2**63), "int64", "does not fit"]),
    ("2**70 for int64", tf.int64, 2**70, [str(2**70), "int64", "does not fit"]),
    ("2**63 as a float for int64", tf.int64, 2.0**63, ["int64", "does not fit"]),
    ("-1 for uint8", tf.uint8, -1, ["-1", "uint8", "does not fit"]),
    ("fractional float for int32", tf.int32, 1.5, ["1.5", "int32", "fractional part"]),
    ("fully masked array", tf.float32, np.ma.masked_array(3.0, mask=True), ["masked array", "mask"]),
    ("partly masked array", (tf.float32, [2]), np.ma.masked_array([1.0, 2.0], mask=[False, True]), ["masked"]),
    ("lone surrogate", tf.string, "\ud800", ["'\\ud800'", "string", "Unicode"]),
    ("bytes that are not UTF-8", tf.string, b"\xff", ["string", "UTF-8"]),
    ("ints for strings", (tf.string, [2]), [1, 2], ["string[2]", "int", "not a string"]),
]


@pytest.mark.parametrize("executor", ["reference", "tensorflow"])
@pytest.mark.parametrize("spec,value,names", [a[1:] for a in ARGUMENTS], ids=[a[0] for a in ARGUMENTS])
def test_an_argument_its_type_cannot_hold_is_refused(executor, spec, value, names):
    comp = identity(spec)
    with pytest.raises(ArgumentError) as info:
        run(EXECUTORS[executor], comp, value)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


@pytest.mark.parametrize("executor", ["reference", "tensorflow"])
def test_arguments_that_fit_are_kept_exactly(executor):
    assert run(EXECUTORS[executor], identity(tf.int64), 2**63 - 1) == 2**63 - 1
    assert run(EXECUTORS[executor], identity(tf.int64), -(2**63)) == -(2**63)
    assert run(EXECUTORS[executor], identity(tf.uint64), 2**64 - 1) == 2**64 - 1
    assert run(EXECUTORS[executor], identity(tf.float16), 65504.0) == 65504.0
    assert run(EXECUTORS[executor], identity(tf.int32), 3.0) == 3
    assert run(EXECUTORS[executor], identity(tf.string), "snow \u2603") == "snow \u2603"
    assert run(EXECUTORS[executor], identity(tf.float32), float("inf")) == np.inf  # inf stays inf


def test_a_polymorphic_computation_refuses_what_no_type_holds():
    poly = fedcore.tf_computation(lambda x: x)
    with pytest.raises(ArgumentError, match=r"does not fit in int64"):
        poly(2**70)
    with pytest.raises(ArgumentError, match=r"1e\+300.*does not fit in float32"):
        poly(1e300)
    with pytest.raises(ArgumentError, match="masked"):
        poly(np.ma.masked_array([1.0], mask=[True]))
    with pytest.raises(ArgumentError, match="Unicode"):
        poly("\ud800")
    assert poly(2**40) == 2**40  # an int beyond int32 is int64, as tf.constant makes it


# --------------------------------------------------------------------------
# Constants in a federated computation.


@pytest.mark.parametrize("executor", ["reference", "tensorflow"])
def test_a_large_python_int_constant_is_int64_and_exact(executor):
    @fedcore.federated_computation
    def big():
        return fedcore.federated_value(2**40, fedcore.SERVER)

    assert str(big.type_signature) == "( -> int64@SERVER)"
    assert run(EXECUTORS[executor], big) == 2**40


@pytest.mark.parametrize(
    "value,names",
    [
        (1e300, ["1e+300", "float32", "np.float64"]),
        (2**70, [str(2**70), "int64"]),
        ("\ud800", ["'\\ud800'", "Unicode"]),
        (np.ma.masked_array([1.0, 2.0], mask=[True, False]), ["masked array"]),
    ],
    ids=["float beyond float32", "int beyond int64", "lone surrogate", "masked array"],
)
def test_a_constant_its_type_cannot_hold_is_refused_while_tracing(value, names):
    with pytest.raises(ArgumentError) as info:
        fedcore.federated_computation(lambda: fedcore.federated_value(value, fedcore.SERVER))
    assert "federated_value" in str(info.value)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_a_float64_constant_keeps_its_value():
    comp = fedcore.federated_computation(lambda: fedcore.federated_value(np.float64(1e300), fedcore.SERVER))
    assert comp() == 1e300


# --------------------------------------------------------------------------
# Integer sums: exact, or an ExecutionError; never wrapped around.


def summing(dtype, fused=False):
    if not fused:
        return fedcore.federated_computation(fedcore.type_at_clients(dtype))(lambda x: fedcore.federated_sum(x))
    ident = identity(dtype)
    return fedcore.federated_computation(fedcore.type_at_clients(dtype))(
        lambda x: fedcore.federated_sum(fedcore.federated_map(ident, x))
    )


OVERFLOWS = [
    (tf.int32, [2**31 - 1, 1], str(2**31)),
    (tf.int32, [-(2**31), -1], str(-(2**31) - 1)),
    (tf.int64, [2**63 - 1, 1], "int64"),
    (tf.uint8, [200, 100], "300"),
    (tf.uint64, [2**64 - 1, 1], "uint64"),
]


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize("fused", [False, True], ids=["sum", "sum of map"])
@pytest.mark.parametrize("dtype,values,shown", OVERFLOWS, ids=[f"{o[0].name}{o[1]}" for o in OVERFLOWS])
def test_an_integer_sum_that_overflows_is_an_execution_error(executor, fused, dtype, values, shown):
    with pytest.raises(ExecutionError) as info:
        run(EXECUTORS[executor], summing(dtype, fused), values)
    message = str(info.value)
    assert "overflows" in message and dtype.name in message and "never wrapped around" in message, message
    if executor == "reference" or dtype.size < 8:  # the TF executor names a 64-bit sum approximately
        assert shown in message, message
    assert "Detected at node" not in message  # TF's graph trace is left out


@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_an_integer_sum_is_exact_whatever_its_partial_sums(executor):
    # Partial sums beyond the dtype's range are no error when the whole sum fits.
    assert run(EXECUTORS[executor], summing(tf.int32), [2**31 - 1, 1, -1]) == 2**31 - 1
    assert run(EXECUTORS[executor], summing(tf.int64, fused=True), [2**62, 2**62, -(2**62)]) == 2**62
    assert run(EXECUTORS[executor], summing(tf.int64), [2**63 - 1, -5, 3]) == 2**63 - 3


@pytest.mark.parametrize("executor", ["reference", "tensorflow"])
def test_sequence_sum_of_integers_is_exact_or_an_error(executor):
    comp = fedcore.federated_computation(fedcore.SequenceType(tf.int32))(lambda x: fedcore.sequence_sum(x))
    assert run(EXECUTORS[executor], comp, [2**31 - 1, 1, -1]) == 2**31 - 1
    with pytest.raises(ExecutionError, match="int32"):
        run(EXECUTORS[executor], comp, [2**31 - 1, 1])


_SUM32 = summing(tf.int32)
_SUM64 = summing(tf.int64)
_TF = tf_runtime.TensorFlowExecutor()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([(tf.int32, 32), (tf.int64, 64)]).flatmap(
        lambda d: st.tuples(
            st.just(d[0]),
            st.lists(st.integers(-(2 ** (d[1] - 1)), 2 ** (d[1] - 1) - 1), min_size=1, max_size=4),
        )
    )
)
def test_integer_sums_are_the_exact_sum_or_refused_on_every_executor(case):
    dtype, values = case
    comp = _SUM32 if dtype == tf.int32 else _SUM64
    info = np.iinfo(dtype.as_numpy_dtype)
    exact = sum(values)
    for executor in (None, lambda: _TF):
        if info.min <= exact <= info.max:
            assert int(run(executor, comp, values)) == exact
        else:
            with pytest.raises(ExecutionError, match="overflows"):
                run(executor, comp, values)


# --------------------------------------------------------------------------
# Complex means.


@pytest.mark.parametrize("executor", list(EXECUTORS))
@pytest.mark.parametrize("dtype", [tf.complex64, tf.complex128])
def test_a_complex_mean_keeps_the_imaginary_part(executor, dtype):
    mean = fedcore.federated_computation(fedcore.type_at_clients(dtype))(lambda x: fedcore.federated_mean(x))
    result = run(EXECUTORS[executor], mean, [1 + 2j, 3 + 4j])
    assert result == 2 + 3j and result.dtype == dtype.as_numpy_dtype

    weighted = fedcore.federated_computation(fedcore.type_at_clients(dtype), fedcore.type_at_clients(tf.float32))(
        lambda x, w: fedcore.federated_mean(x, w)
    )
    assert run(EXECUTORS[executor], weighted, [1 + 1j, 4 - 2j], [2.0, 1.0]) == 2 + 0j


_COMPLEX_MEAN = fedcore.federated_computation(fedcore.type_at_clients(tf.complex128))(
    lambda x: fedcore.federated_mean(x)
)
_finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(complex, _finite, _finite), min_size=1, max_size=4))
def test_complex_means_equal_numpys_on_every_executor(values):
    expected = np.mean(np.array(values, np.complex128))
    for executor in (None, lambda: _TF):
        assert np.isclose(run(executor, _COMPLEX_MEAN, values), expected, rtol=1e-12, atol=1e-9)


_F32 = identity(tf.float32)
_I32 = identity(tf.int32)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**80), 2**80)))
def test_an_argument_is_its_value_in_the_dtype_or_refused(x):
    # float32: the nearest float32, unless a finite x would become inf; int32: x itself or refused.
    with np.errstate(over="ignore"):
        nearest = np.float32(float(x)) if not isinstance(x, int) or abs(x) < 2**128 else np.float32(np.inf)
    if np.isfinite(float(x)) and not np.isfinite(nearest):
        with pytest.raises(ArgumentError, match="does not fit in float32"):
            _F32(x)
    else:
        got = _F32(x)
        assert (np.isnan(got) and np.isnan(nearest)) or got == nearest
    whole = isinstance(x, int) or (np.isfinite(x) and x == int(x))
    fits = whole and -(2**31) <= int(x) < 2**31
    if fits:
        assert _I32(x) == int(x)
    else:
        with pytest.raises(ArgumentError, match="int32"):
            _I32(x)

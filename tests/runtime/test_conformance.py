"""The conformance suite, run on the reference executor (its oracle), and checks of the suite itself."""

import collections
import functools
import subprocess
import sys

import attrs
import numpy as np
import pytest

import fedcore
from fedcore.compiler.computation import Computation
from fedcore.compiler.intrinsics import INTRINSICS
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.structure import Struct
from fedcore.testing import conformance

# --------------------------------------------------------------------------
# The reference executor passes every case, including the hand-computed expected values.


@conformance.parametrize()
def test_reference_executor_conforms(case):
    conformance.run_case(case, fedcore.ReferenceExecutor)


def test_there_are_enough_cases_with_unique_names():
    names = [c.name for c in conformance.CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


def test_every_value_case_has_a_hand_computed_expected_value():
    # The reference is the oracle for executors; these values are the oracle for the reference.
    missing = [c.name for c in conformance.CASES if c.expect_error is None and c.expected is None]
    assert not missing


def test_error_cases_expect_type_errors_for_bad_arguments():
    for case in conformance.select(tags=["errors"]):
        if case.expect_error is ExecutionError:
            continue
        classes = case.expect_error if isinstance(case.expect_error, tuple) else (case.expect_error,)
        assert all(issubclass(c, TypeError) for c in classes), case.name
        assert not any(issubclass(c, (AttributeError, KeyError, IndexError)) for c in classes), case.name


@pytest.fixture(scope="module")
def exercised():
    return conformance.exercised_intrinsics()


def test_every_intrinsic_is_exercised(exercised):
    missing = sorted(set(INTRINSICS) - set(exercised))
    assert not missing, f"intrinsics no case exercises: {missing}"


def test_the_suite_covers_each_area():
    tags = collections.Counter(t for c in conformance.CASES for t in c.tags)
    for tag in ("intrinsics", "zero_clients", "datasets", "polymorphism", "strings", "containers", "lambdas", "errors"):
        assert tags[tag] >= 2, tag


def test_importing_builds_nothing():
    # Importing traces no computation: every case's build runs on first use.
    code = (
        "from fedcore.testing import conformance as c\n"
        "assert all(x.build.cache_info().currsize == 0 for x in c.CASES)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# --------------------------------------------------------------------------
# Executors given as instances and as factories.


def test_run_all_with_an_instance_uses_each_case_client_count():
    # Configured with 7 clients, the instance still runs the 3-client cases with 3 clients.
    report = conformance.run_all(fedcore.ReferenceExecutor(num_clients=7))
    assert report.ok
    assert len(report.passed) == len(conformance.CASES)
    assert "all" in str(report)


def test_make_executor_forms():
    made = conformance.make_executor(lambda n: fedcore.ReferenceExecutor(num_clients=n), 3)
    assert made.num_clients == 3
    instance = fedcore.ReferenceExecutor()
    assert conformance.make_executor(instance) is instance
    assert conformance.make_executor(fedcore.ReferenceExecutor, 2).num_clients == 2
    with pytest.raises(TypeError):
        conformance.make_executor(lambda n: "not an executor", 1)
    with pytest.raises(TypeError):
        conformance.make_executor(42)


def test_pytest_params_and_select():
    params = conformance.pytest_params()
    assert [p.id for p in params] == [c.name for c in conformance.CASES]
    assert params[0].values == (conformance.CASES[0],)
    datasets = conformance.select(tags=["datasets"])
    assert datasets and all("datasets" in c.tags for c in datasets)
    assert not any("errors" in c.tags for c in conformance.select(exclude_tags=["errors"]))
    assert [c.name for c in conformance.select(names=["federated_mean"])] == ["federated_mean"]
    with pytest.raises(KeyError):
        conformance.select(names=["no_such_case"])
    assert conformance.get_case("federated_mean").expected == pytest.approx(69.5333, abs=1e-4)


def test_select_rejects_unknown_tags():
    with pytest.raises(ValueError, match=r"unknown conformance tag in exclude_tags: 'error'; known tags: .*\berrors\b"):
        conformance.select(exclude_tags=("error",))
    with pytest.raises(ValueError, match=r"unknown conformance tags in tags: 'nope', 'typo'; known tags: containers, "):
        conformance.select(tags=["typo", "datasets", "nope"])
    with pytest.raises(TypeError, match="collection of tags"):
        conformance.select(tags="errors")
    # Tags of the cases given count as known.
    mine = attrs.evolve(conformance.get_case("federated_sum"), name="mine", tags={"my_tag"})
    assert conformance.select([mine], tags=["my_tag"]) == [mine]
    with pytest.raises(ValueError, match="'my_tag'"):
        conformance.select(tags=["my_tag"])


# --------------------------------------------------------------------------
# The TensorFlow executor with its client work forced onto the vectorized path.

_NOT_VECTORIZABLE = "strategy='vectorized' cannot run this client work"


def _vectorized(num_clients):
    return TensorFlowExecutor(num_clients=num_clients, strategy="vectorized")


@functools.lru_cache(maxsize=None)
def _run_vectorized(name):
    """'matched' if the case passed under strategy='vectorized'; 'not vectorizable' if its client work was refused."""
    case = conformance.get_case(name)
    try:
        conformance.run_case(case, _vectorized)
    except AssertionError as e:
        error = e.__cause__
        if case.expect_error is None and isinstance(error, ExecutionError) and str(error).startswith(_NOT_VECTORIZABLE):
            return "not vectorizable"
        raise
    return "matched"


@conformance.parametrize()
def test_tensorflow_executor_vectorized_conforms_or_refuses_the_client_work(case):
    _run_vectorized(case.name)


def test_most_cases_run_vectorized():
    value_cases = [c for c in conformance.CASES if c.expect_error is None]
    outcomes = {c.name: _run_vectorized(c.name) for c in value_cases}
    matched = {name for name, outcome in outcomes.items() if outcome == "matched"}
    assert len(matched) >= 0.8 * len(value_cases), f"not vectorizable: {sorted(set(outcomes) - matched)}"
    # Not only cases without client work: most that map at some clients ran vectorized too.
    mapping = {
        c.name
        for c in value_cases
        if "zero_clients" not in c.tags
        and isinstance(c.build(), Computation)
        and "federated_map" in conformance.intrinsic_uris(c.build().ir)
    }
    assert len(mapping) >= 10
    assert len(mapping & matched) >= 0.6 * len(mapping), f"not vectorizable: {sorted(mapping - matched)}"


# --------------------------------------------------------------------------
# Broken executors are caught.


def _perturb(value):
    if isinstance(value, Struct):
        return Struct((n, _perturb(v)) for n, v in value.items())
    if isinstance(value, list):
        return [_perturb(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind == "f":
        return (value + 0.01).astype(value.dtype)
    return value


class PerturbedMeanExecutor:
    """The reference, except results of computations that average are off by 0.01."""

    def __init__(self, num_clients=None):
        self.inner = fedcore.ReferenceExecutor(num_clients=num_clients)

    def execute(self, comp, argument, num_clients=None):
        result = self.inner.execute(comp, argument, num_clients=num_clients)
        if conformance.intrinsic_uris(comp.ir) & {"federated_mean", "federated_weighted_mean"}:
            return _perturb(result)
        return result


class IgnoresClientCountExecutor:
    """Uses its own client count even when the arguments say otherwise."""

    def __init__(self, num_clients=None):
        self.inner = fedcore.ReferenceExecutor(num_clients=1)

    def execute(self, comp, argument, num_clients=None):
        return self.inner.execute(comp, argument, num_clients=None)


class ZeroMeanOverNoClientsExecutor:
    """Says the mean over no clients is 0 instead of NaN."""

    def __init__(self, num_clients=None):
        self.inner = fedcore.ReferenceExecutor(num_clients=num_clients)

    def execute(self, comp, argument, num_clients=None):
        result = self.inner.execute(comp, argument, num_clients=num_clients)
        return _replace_nan(result) if num_clients == 0 else result


def _replace_nan(value):
    if isinstance(value, Struct):
        return Struct((n, _replace_nan(v)) for n, v in value.items())
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind == "f":
        return np.nan_to_num(value, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return value


class WrongErrorExecutor:
    """Fails runs with KeyError instead of ExecutionError."""

    def __init__(self, num_clients=None):
        self.inner = fedcore.ReferenceExecutor(num_clients=num_clients)

    def execute(self, comp, argument, num_clients=None):
        try:
            return self.inner.execute(comp, argument, num_clients=num_clients)
        except ExecutionError as e:
            raise KeyError(str(e)) from None


def test_run_all_raises_naming_the_failing_cases():
    cases = conformance.select(names=["federated_sum", "federated_mean", "tutorial_metrics_aggregation"])
    with pytest.raises(AssertionError) as info:
        conformance.run_all(PerturbedMeanExecutor, cases)
    message = str(info.value)
    assert "2 of 3 conformance cases failed: federated_mean, tutorial_metrics_aggregation" in message
    assert "differs from the reference" in message


def test_run_all_catches_a_wrong_mean():
    report = conformance.run_all(PerturbedMeanExecutor, raise_on_failure=False)
    assert not report.ok
    assert {"federated_mean", "federated_mean_weighted", "blocks_across_placements"} <= set(report.failed)
    assert "federated_sum" in report.passed and "federated_min_and_max" in report.passed
    # Zero-client means are NaN either way: NaN + 0.01 is still NaN.
    assert "zero_clients_mean_gives_nan" in report.passed


def test_run_all_catches_an_ignored_client_count():
    report = conformance.run_all(IgnoresClientCountExecutor, raise_on_failure=False)
    assert {"federated_eval_at_clients", "federated_value_at_clients_summed", "federated_broadcast_then_sum"} <= set(
        report.failed
    )
    assert "federated_mean" in report.passed


def test_run_all_catches_a_wrong_zero_client_mean():
    report = conformance.run_all(
        ZeroMeanOverNoClientsExecutor, conformance.select(tags=["zero_clients"]), raise_on_failure=False
    )
    assert set(report.failed) == {
        "zero_clients_mean_gives_nan",
        "zero_clients_weighted_mean_gives_nan",
        "zero_clients_tutorial_metrics",
        "round_zero_clients_mean_is_nan",
    }


def test_run_case_catches_the_wrong_error_type():
    case = conformance.get_case("federated_secure_sum_out_of_range")
    with pytest.raises(AssertionError, match="should raise ExecutionError, but raised KeyError"):
        conformance.run_case(case, WrongErrorExecutor)


def test_a_wrong_expected_value_blames_the_reference():
    case = attrs.evolve(conformance.get_case("federated_mean"), name="bad_expectation", expected=70.0)
    with pytest.raises(AssertionError, match="reference executor's result is wrong"):
        conformance.run_case(case, fedcore.ReferenceExecutor)


def test_an_error_case_that_does_not_raise_fails():
    case = attrs.evolve(conformance.get_case("federated_sum"), name="no_error", expect_error=TypeError, expected=None)
    with pytest.raises(AssertionError, match="should raise TypeError, but returned"):
        conformance.run_case(case, fedcore.ReferenceExecutor)


# --------------------------------------------------------------------------
# The comparator.

Point = collections.namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    "actual, expected",
    [
        (np.float32(1.0), np.float32(1.0 + 1e-7)),
        (np.float32(np.nan), np.float32(np.nan)),
        (np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf])),
        ([np.int32(1), "a"], [np.int32(1), "a"]),
        (Struct.named(a=np.int32(1)), Struct.named(a=np.int32(1))),
        (collections.OrderedDict(a=np.int32(1)), collections.OrderedDict(a=np.int32(1))),
        (Point(np.int32(1), np.float32(2.0)), Point(np.int32(1), np.float32(2.0))),
    ],
)
def test_comparator_accepts_equal_values(actual, expected):
    conformance.assert_values_equal(actual, expected)


@pytest.mark.parametrize(
    "actual, expected",
    [
        (np.float32(1.0), np.float32(1.1)),
        (np.float32(np.nan), np.float32(0.0)),
        (np.array([np.inf]), np.array([-np.inf])),
        (np.int32(1), np.int64(1)),
        (np.int32(1), np.array(1, np.int32)),
        (np.array([1, 2], np.int32), np.array([1, 2, 3], np.int32)),
        ((np.int32(1),), [np.int32(1)]),
        ({"a": np.int32(1)}, collections.OrderedDict(a=np.int32(1))),
        (collections.OrderedDict(b=np.int32(1), a=np.int32(2)), collections.OrderedDict(a=np.int32(2), b=np.int32(1))),
        ((np.int32(1), np.float32(2.0)), Point(np.int32(1), np.float32(2.0))),
        (Struct.named(a=np.int32(1)), Struct.named(b=np.int32(1))),
        ("a", "b"),
        (np.int32(1), "1"),
    ],
)
def test_comparator_rejects_different_values(actual, expected):
    with pytest.raises(AssertionError):
        conformance.assert_values_equal(actual, expected)


def test_comparator_names_the_differing_element():
    with pytest.raises(AssertionError, match=r"result\[1\]\['m'\]\.y"):
        conformance.assert_values_equal(
            [np.int32(0), {"m": Point(np.int32(1), np.float32(2.0))}],
            [np.int32(0), {"m": Point(np.int32(1), np.float32(3.0))}],
        )


def test_loose_comparison_allows_python_numbers_but_not_other_containers():
    conformance.assert_values_equal(np.float32(69.53333), 69.53333, strict=False)
    conformance.assert_values_equal([np.int32(7)], [7], strict=False)
    with pytest.raises(AssertionError):
        conformance.assert_values_equal((np.int32(7),), [7], strict=False)


# --------------------------------------------------------------------------
# Core fixes made while writing the cases.


def test_instantiating_a_non_function_intrinsic_is_a_type_error():
    from fedcore.compiler.intrinsics import lookup

    with pytest.raises(TypeError, match="generic_zero is not a function"):
        lookup("generic_zero").instantiate(None)


def test_sequence_sum_accepts_numeric_sequences_and_rejects_strings():
    @fedcore.federated_computation("int32*")
    def total(s):
        return fedcore.sequence_sum(s)

    assert total([1, 2, 3]) == 6
    with pytest.raises(fedcore.FederatedTypeError, match="numeric"):

        @fedcore.federated_computation("string*")
        def join(s):
            return fedcore.sequence_sum(s)

"""Running cases on executors: ``run_case``, ``run_all`` and its ``Report``, pytest helpers."""

from __future__ import annotations

import collections
from typing import Any, Dict, Iterable, List, Optional, Tuple

import attrs

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.transformations import pipeline, run_pipeline
from fedcore.runtime.execution import execution_context
from fedcore.runtime.reference import ReferenceExecutor
from fedcore.testing.conformance.case import CASES, Case, ErrorSpec
from fedcore.testing.conformance.compare import assert_values_equal

ExecutorSpec = Any  # an executor instance, or a factory ``num_clients -> executor``


class _WithClientCount:
    """Gives an executor instance a case's client count when the arguments imply none."""

    def __init__(self, executor: Any, num_clients: int):
        self._executor = executor
        self._num_clients = num_clients

    def execute(self, comp, argument, num_clients=None):
        return self._executor.execute(
            comp, argument, num_clients=self._num_clients if num_clients is None else num_clients
        )

    def __repr__(self) -> str:
        return f"{self._executor!r} with {self._num_clients} clients"


def make_executor(spec: ExecutorSpec, num_clients: Optional[int] = None) -> Any:
    """The executor to run a case with ``num_clients`` on, from an instance or a factory."""
    if not isinstance(spec, type) and callable(getattr(spec, "execute", None)):
        return spec if num_clients is None else _WithClientCount(spec, num_clients)
    if callable(spec):
        executor = spec(num_clients)
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"executor factory {spec!r} returned {executor!r}, which has no execute() method")
        return executor
    raise TypeError(f"expected an executor or a factory num_clients -> executor, got {spec!r}")


@attrs.frozen
class _Outcome:
    value: Any = None
    error: Optional[BaseException] = None


def _run(comp: Any, case: Case, spec: ExecutorSpec) -> _Outcome:
    executor = make_executor(spec, case.num_clients)
    args, kwargs = case.arguments()
    try:
        with execution_context(executor):
            return _Outcome(value=comp(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 -- every error is an outcome to compare
        return _Outcome(error=e)


def _error_names(spec: ErrorSpec) -> str:
    classes = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(c.__name__ for c in classes)


def _check_raised(case: Case, who: str, outcome: _Outcome) -> None:
    if outcome.error is None:
        raise AssertionError(
            f"{case.name}: {who} should raise {_error_names(case.expect_error)}, but returned {outcome.value!r}"
        )
    if not isinstance(outcome.error, case.expect_error):
        raise AssertionError(
            f"{case.name}: {who} should raise {_error_names(case.expect_error)}, but raised "
            f"{type(outcome.error).__name__}: {outcome.error}"
        ) from outcome.error


def run_case(case: Case, executor: ExecutorSpec, reference: Optional[ExecutorSpec] = None) -> Any:
    """Runs ``case`` on ``executor`` and on the reference; raises AssertionError if they differ.

    ``executor`` and ``reference`` are executor instances or factories
    ``num_clients -> executor`` (see the module docstring); ``reference``
    defaults to ``fedcore.ReferenceExecutor``.  Returns the executor's result
    (None for error cases).
    """
    reference = ReferenceExecutor if reference is None else reference
    try:
        comp = case.build()
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{case.name}: building the computation failed: {type(e).__name__}: {e}") from e
    ref = _run(comp, case, reference)
    if case.expect_error is not None:
        _check_raised(case, "the reference executor", ref)
        _check_raised(case, "the executor", _run(comp, case, executor))
        return None
    if ref.error is not None:
        raise AssertionError(
            f"{case.name}: the reference executor raised {type(ref.error).__name__}: {ref.error}"
        ) from ref.error
    if case.expected is not None:
        try:
            assert_values_equal(ref.value, case.expected, rtol=case.rtol, atol=case.atol, strict=False)
        except AssertionError as e:
            raise AssertionError(f"{case.name}: the reference executor's result is wrong: {e}") from None
    got = _run(comp, case, executor)
    if got.error is not None:
        raise AssertionError(f"{case.name}: the executor raised {type(got.error).__name__}: {got.error}") from got.error
    try:
        assert_values_equal(got.value, ref.value, rtol=case.rtol, atol=case.atol, strict=True)
    except AssertionError as e:
        raise AssertionError(
            f"{case.name}: the executor's result differs from the reference's: {e}\n"
            f"  executor:  {got.value!r}\n  reference: {ref.value!r}"
        ) from None
    return got.value


@attrs.frozen
class Failure:
    """A failed case: its name and what went wrong."""

    name: str
    message: str


@attrs.frozen
class Report:
    """What ``run_all`` found: the names of the cases that passed, and the failures."""

    executor: str
    passed: Tuple[str, ...]
    failures: Tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed(self) -> Tuple[str, ...]:
        return tuple(f.name for f in self.failures)

    def __str__(self) -> str:
        total = len(self.passed) + len(self.failures)
        if self.ok:
            return f"{self.executor}: all {total} conformance cases passed"
        lines = [
            f"{self.executor}: {len(self.failures)} of {total} conformance cases failed: {', '.join(self.failed)}"
        ]
        lines.extend(f"\n--- {f.name}\n{f.message}" for f in self.failures)
        return "\n".join(lines)


def run_all(
    executor: ExecutorSpec,
    cases: Optional[Iterable[Case]] = None,
    *,
    reference: Optional[ExecutorSpec] = None,
    raise_on_failure: bool = True,
) -> Report:
    """Runs every case (or ``cases``) and returns a Report.

    With ``raise_on_failure`` (the default) a failure of any case raises an
    AssertionError whose message names every failing case and why.
    """
    passed: List[str] = []
    failures: List[Failure] = []
    for case in CASES if cases is None else cases:
        try:
            run_case(case, executor, reference)
        except Exception as e:  # noqa: BLE001
            failures.append(Failure(case.name, f"{type(e).__name__}: {e}" if not isinstance(e, AssertionError) else str(e)))
        else:
            passed.append(case.name)
    report = Report(repr(executor), tuple(passed), tuple(failures))
    if failures and raise_on_failure:
        raise AssertionError(str(report))
    return report


def pytest_params(cases: Optional[Iterable[Case]] = None) -> list:
    """``pytest.param(case, id=case.name)`` for each case, for ``pytest.mark.parametrize``."""
    import pytest

    return [pytest.param(case, id=case.name) for case in (CASES if cases is None else cases)]


def parametrize(argname: str = "case", cases: Optional[Iterable[Case]] = None):
    """A ``pytest.mark.parametrize`` decorator giving the test one case per run in ``argname``."""
    import pytest

    return pytest.mark.parametrize(argname, pytest_params(cases))


class _RecordingExecutor:
    def __init__(self, num_clients: Optional[int], seen: list):
        self._inner = ReferenceExecutor(num_clients=num_clients)
        self._seen = seen

    def execute(self, comp, argument, num_clients=None):
        self._seen.append(comp.ir)
        return self._inner.execute(comp, argument, num_clients=num_clients)


def intrinsic_uris(ir: bb.BuildingBlock) -> set:
    """The uris of the intrinsics called anywhere in ``ir``."""
    return {node.uri for node in bb.walk(ir) if isinstance(node, bb.Intrinsic)}


def exercised_intrinsics(cases: Optional[Iterable[Case]] = None) -> Dict[str, List[str]]:
    """Maps each intrinsic uri to the names of the cases whose computations use it.

    Runs the cases on the reference executor and looks at the IR it was given,
    before and after the execution pipeline (which makes the fused intrinsics).
    """
    used: Dict[str, List[str]] = collections.defaultdict(list)
    for case in CASES if cases is None else cases:
        seen: list = []
        try:
            comp = case.build()
        except Exception:  # noqa: BLE001 -- a case that cannot build uses nothing
            continue
        _run(comp, case, lambda n: _RecordingExecutor(n, seen))
        irs = seen + [run_pipeline(ir, pipeline("execution")) for ir in seen]
        for uri in sorted(set().union(*[intrinsic_uris(ir) for ir in irs])):
            used[uri].append(case.name)
    return dict(used)

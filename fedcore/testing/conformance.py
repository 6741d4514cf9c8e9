"""The executor conformance suite.

A body of cases, each a small federated or TensorFlow computation with its
arguments, that every executor must run exactly as the reference interpreter
(``fedcore.ReferenceExecutor``) does: the same values in the same Python
containers, or the same kind of error.  Certify an executor in one call::

    from fedcore.testing import conformance
    conformance.run_all(lambda num_clients: MyExecutor(num_clients=num_clients))

or one pytest test per case::

    @conformance.parametrize()
    def test_my_executor(case):
        conformance.run_case(case, MyExecutor)

Executors are given to the suite in one of two forms:

* a *factory*, any callable (a class included) taking ``num_clients`` and
  returning an executor.  It is called once per case with the case's
  ``num_clients`` (None for most cases, where the arguments say how many
  clients there are).  This is the preferred form.
* an executor *instance*.  For a case that fixes ``num_clients``, its
  ``execute`` is then called with that count as ``num_clients`` (the protocol
  lets the caller state the client count), instead of the count it was
  configured with.

Each case is run through the public calling path, ``comp(*args, **kwargs)``
inside ``fedcore.execution_context(executor)``, so argument checking,
polymorphic specialization and conversion of results back to Python
containers are part of what is compared.

Cases are built lazily: importing this module traces nothing and makes no
tensors or datasets.  A case's computation is traced the first time the case
runs, then reused.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

import attrs
import numpy as np
import tensorflow as tf

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler.context import FederatedTypeError
from fedcore.runtime.execution import execution_context
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.reference import ReferenceExecutor
from fedcore.runtime.values import ArgumentError
from fedcore.structure import Struct, is_namedtuple

ErrorSpec = Union[Type[BaseException], Tuple[Type[BaseException], ...]]

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


# --------------------------------------------------------------------------
# Cases.


class Lazy:
    """An argument made when the case runs (e.g. a tf.data.Dataset), not at import."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make

    def __repr__(self) -> str:
        return f"lazy({getattr(self.make, '__name__', self.make)!r})"


def lazy(make: Callable[[], Any]) -> Lazy:
    """Marks an argument to be made by calling ``make()`` each time the case runs."""
    return Lazy(make)


def _resolve(value: Any) -> Any:
    if isinstance(value, Lazy):
        return value.make()
    if type(value) in (list, tuple):
        return type(value)(_resolve(v) for v in value)
    if type(value) in (dict, collections.OrderedDict):
        return type(value)((k, _resolve(v)) for k, v in value.items())
    return value


def _check_error_spec(instance, attribute, value):
    if value is None:
        return
    classes = value if isinstance(value, tuple) else (value,)
    if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise TypeError(f"expect_error must be an exception class or a tuple of them, got {value!r}")


@attrs.frozen(eq=False)
class Case:
    """One conformance case.

    ``build()`` returns the computation to call (a ``Computation`` or a
    polymorphic one); it is called when the case runs.  The computation is
    called with ``args`` and ``kwargs``; an argument wrapped in ``lazy(fn)``
    is made by ``fn()`` at that time.  ``num_clients`` is the client count
    for computations whose arguments do not imply one.

    The case passes when the executor's result equals the reference's
    (within ``rtol``/``atol`` for floating-point values, NaN equal to NaN,
    containers of the same types), or, when ``expect_error`` is set, when
    both raise an instance of it.  ``expected``, when not None, is a value
    computed by hand that the reference's result must equal too; it is
    compared without requiring the same numpy dtypes (``69.5`` matches
    ``np.float32(69.5)``) but with the same containers.
    """

    name: str
    build: Callable[[], Any] = attrs.field(repr=False)
    args: Tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    num_clients: Optional[int] = None
    expect_error: Optional[ErrorSpec] = attrs.field(default=None, validator=_check_error_spec)
    expected: Any = None
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    tags: frozenset = attrs.field(default=frozenset(), converter=frozenset)
    doc: str = ""

    def __attrs_post_init__(self):
        if self.expect_error is not None and self.expected is not None:
            raise ValueError(f"case {self.name}: give expected or expect_error, not both")

    def arguments(self) -> Tuple[tuple, dict]:
        """The positional and keyword arguments, with lazy ones made now."""
        return _resolve(tuple(self.args)), {k: _resolve(v) for k, v in self.kwargs.items()}


CASES: List[Case] = []
_NAMES: Dict[str, Case] = {}


def _add(name: str, build: Callable[[], Any], *args: Any, **options: Any) -> Case:
    """Registers a case; ``build`` is traced once, on first use."""
    if name in _NAMES:
        raise ValueError(f"duplicate conformance case name {name!r}")
    case = Case(name, functools.lru_cache(maxsize=None)(build), args, **options)
    CASES.append(case)
    _NAMES[name] = case
    return case


def get_case(name: str) -> Case:
    try:
        return _NAMES[name]
    except KeyError:
        raise KeyError(f"no conformance case named {name!r}") from None


def select(
    cases: Optional[Iterable[Case]] = None,
    *,
    tags: Optional[Iterable[str]] = None,
    exclude_tags: Optional[Iterable[str]] = None,
    names: Optional[Iterable[str]] = None,
) -> List[Case]:
    """The cases (of ``cases``, or all) named in ``names``, having any of ``tags`` and none of ``exclude_tags``.

    Tags in use: intrinsics, zero_clients, zeros, num_clients, lambdas, containers,
    datasets, polymorphism, strings, keywords, tutorial, errors.
    """
    chosen = list(CASES if cases is None else cases)
    if names is not None:
        wanted_names = set(names)
        unknown = wanted_names - {c.name for c in chosen}
        if unknown:
            raise KeyError(f"no conformance cases named {sorted(unknown)}")
        chosen = [c for c in chosen if c.name in wanted_names]
    if tags is not None:
        wanted = set(tags)
        chosen = [c for c in chosen if c.tags & wanted]
    if exclude_tags is not None:
        unwanted = set(exclude_tags)
        chosen = [c for c in chosen if not c.tags & unwanted]
    return chosen


# --------------------------------------------------------------------------
# Comparing results.


def _fail(path: str, message: str):
    raise AssertionError(f"{path}: {message}")


def _type_name(value: Any) -> str:
    return type(value).__qualname__


def _same_type(actual: Any, expected: Any, path: str) -> None:
    if type(actual) is not type(expected):
        _fail(path, f"expected a {_type_name(expected)}, got a {_type_name(actual)}: {actual!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.generic, int, float, complex)) and not isinstance(value, (str, bytes))


def _is_dataset(value: Any) -> bool:
    return isinstance(value, tf.data.Dataset)


def assert_values_equal(
    actual: Any,
    expected: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    strict: bool = True,
    path: str = "result",
) -> None:
    """Raises AssertionError, naming the first differing element, unless equal.

    Containers (fedcore.Struct, attrs classes, namedtuples, dicts, lists,
    tuples) must have the same type, names or keys in the same order, and
    equal elements.  Floating-point tensors compare within ``rtol``/``atol``
    with NaN equal to NaN and infinities equal when of the same sign; other
    tensors and strings compare exactly.  ``strict`` also requires numpy
    leaves of the same class (scalar or array) and dtype; without it a Python
    number matches a numpy value of any dtype.
    """
    _compare(actual, expected, rtol, atol, strict, path)


def _compare(a: Any, e: Any, rtol: float, atol: float, strict: bool, path: str) -> None:
    if _is_dataset(a) or _is_dataset(e):
        _fail(path, "datasets cannot be compared; compare lists of their elements")
    if isinstance(e, Struct):
        if not isinstance(a, Struct):
            _fail(path, f"expected a fedcore.Struct, got a {_type_name(a)}: {a!r}")
        if a.names() != e.names():
            _fail(path, f"expected a Struct with names {list(e.names())}, got names {list(a.names())}")
        for i, (n, av, ev) in enumerate(zip(e.names(), a, e)):
            _compare(av, ev, rtol, atol, strict, f"{path}.{n}" if n else f"{path}[{i}]")
        return
    if attrs.has(type(e)):
        _same_type(a, e, path)
        for f in attrs.fields(type(e)):
            _compare(getattr(a, f.name), getattr(e, f.name), rtol, atol, strict, f"{path}.{f.name}")
        return
    if is_namedtuple(e):
        _same_type(a, e, path)
        for n in e._fields:
            _compare(getattr(a, n), getattr(e, n), rtol, atol, strict, f"{path}.{n}")
        return
    if isinstance(e, dict):
        _same_type(a, e, path)
        if list(a.keys()) != list(e.keys()):
            _fail(path, f"expected keys {list(e.keys())}, got keys {list(a.keys())}")
        for k in e:
            _compare(a[k], e[k], rtol, atol, strict, f"{path}[{k!r}]")
        return
    if isinstance(e, (list, tuple)):
        _same_type(a, e, path)
        if len(a) != len(e):
            _fail(path, f"expected {len(e)} elements, got {len(a)}: {a!r}")
        for i, (av, ev) in enumerate(zip(a, e)):
            _compare(av, ev, rtol, atol, strict, f"{path}[{i}]")
        return
    if isinstance(e, (str, bytes)):
        if (strict and type(a) is not type(e)) or not isinstance(a, (str, bytes)) or a != e:
            _fail(path, f"expected {e!r}, got {a!r}")
        return
    if e is None:
        if a is not None:
            _fail(path, f"expected None, got {a!r}")
        return
    if _is_number(e):
        _compare_tensors(a, e, rtol, atol, strict, path)
        return
    if (strict and type(a) is not type(e)) or a != e:
        _fail(path, f"expected {e!r}, got {a!r}")


def _compare_tensors(a: Any, e: Any, rtol: float, atol: float, strict: bool, path: str) -> None:
    if not _is_number(a):
        _fail(path, f"expected a tensor {e!r}, got a {_type_name(a)}: {a!r}")
    an, en = np.asarray(a), np.asarray(e)
    if strict:
        if isinstance(a, np.ndarray) != isinstance(e, np.ndarray) or not isinstance(a, (np.ndarray, np.generic)):
            _fail(path, f"expected a {_type_name(e)}, got a {_type_name(a)}: {a!r}")
        if an.dtype != en.dtype:
            _fail(path, f"expected dtype {en.dtype}, got dtype {an.dtype}: {a!r}")
    if an.shape != en.shape:
        _fail(path, f"expected shape {en.shape}, got shape {an.shape}: {a!r}")
    if an.dtype.kind == "O" or en.dtype.kind == "O":
        equal = bool(np.array_equal(an, en))
    elif an.dtype.kind in "fc" or en.dtype.kind in "fc":
        equal = bool(np.all(np.isclose(an, en, rtol=rtol, atol=atol, equal_nan=True)))
    else:
        equal = bool(np.array_equal(an, en))
    if not equal:
        _fail(path, f"expected {e!r}, got {a!r}")


# --------------------------------------------------------------------------
# Running cases.

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

    Runs the cases on the reference executor and looks at the IR it was given.
    """
    used: Dict[str, List[str]] = collections.defaultdict(list)
    for case in CASES if cases is None else cases:
        seen: list = []
        try:
            comp = case.build()
        except Exception:  # noqa: BLE001 -- a case that cannot build uses nothing
            continue
        _run(comp, case, lambda n: _RecordingExecutor(n, seen))
        for uri in sorted(set().union(*[intrinsic_uris(ir) for ir in seen])):
            used[uri].append(case.name)
    return dict(used)


# --------------------------------------------------------------------------
# Shared containers and computations.

Point = collections.namedtuple("Point", ["x", "y"])


@attrs.frozen
class Pair:
    a: Any
    b: Any


OD = collections.OrderedDict

_clients = fedcore.type_at_clients
_server = fedcore.type_at_server
_FLOATS = "float32*"


@functools.lru_cache(maxsize=None)
def _add_half():
    @fedcore.tf_computation(tf.float32)
    def add_half(x):
        return x + 0.5

    return add_half


@functools.lru_cache(maxsize=None)
def _seven():
    @fedcore.tf_computation
    def seven():
        return tf.constant(7)

    return seven


@functools.lru_cache(maxsize=None)
def _weighted_xy():
    @fedcore.tf_computation("<x=float32,y=int32>*")
    def weighted_xy(ds):
        return ds.reduce(0.0, lambda acc, e: acc + e["x"] * tf.cast(e["y"], tf.float32))

    return weighted_xy


@functools.lru_cache(maxsize=None)
def _squares_table():
    @fedcore.tf_computation(tf.int32)
    def squares_table(n):
        def row(v):
            return OD(v=v, sq=v * v)

        return tf.data.Dataset.range(tf.cast(n, tf.int64)).map(row)

    return squares_table


@functools.lru_cache(maxsize=None)
def _two_params_tf():
    @fedcore.tf_computation(tf.int32, tf.float32)
    def int_plus_float(a, b):
        return tf.cast(a, tf.float32) + b

    return int_plus_float


def _xy_dataset():
    return tf.data.Dataset.from_tensor_slices(OD(x=[1.0, 3.0], y=[2, 1]))


def _float_dataset(*values: float):
    def make():
        return tf.data.Dataset.from_tensor_slices(np.asarray(values, np.float32))

    make.__name__ = f"dataset{values}"
    return lazy(make)


# --------------------------------------------------------------------------
# federated_value, federated_broadcast, federated_eval.


def _value_at_server():
    @fedcore.federated_computation
    def value_at_server():
        return fedcore.federated_value(10, fedcore.SERVER)

    return value_at_server


_add("federated_value_at_server", _value_at_server, expected=10, tags={"intrinsics"})


def _value_at_server_struct():
    @fedcore.federated_computation
    def value_at_server_struct():
        return fedcore.federated_value(OD(greeting="Hello", count=3), fedcore.SERVER)

    return value_at_server_struct


_add(
    "federated_value_at_server_struct_of_string",
    _value_at_server_struct,
    expected=OD(greeting="Hello", count=3),
    tags={"intrinsics", "strings", "containers"},
)


def _value_at_clients():
    @fedcore.federated_computation
    def value_at_clients():
        return fedcore.federated_value(2.5, fedcore.CLIENTS)

    return value_at_clients


_add("federated_value_at_clients", _value_at_clients, num_clients=3, expected=2.5, tags={"intrinsics"})


def _value_at_clients_summed():
    @fedcore.federated_computation
    def count_clients():
        return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))

    return count_clients


_add(
    "federated_value_at_clients_summed",
    _value_at_clients_summed,
    num_clients=4,
    expected=4,
    tags={"intrinsics", "num_clients"},
    doc="An all-equal value summed over clients: the executor must use the client count it is given.",
)


def _broadcast_zip():
    @fedcore.federated_computation(_server(tf.int32), _clients(tf.float32))
    def broadcast_zip(s, c):
        return fedcore.federated_zip((fedcore.federated_broadcast(s), c))

    return broadcast_zip


_add(
    "federated_broadcast_zipped_with_client_values",
    _broadcast_zip,
    3,
    [1.0, 2.0],
    expected=[(3, 1.0), (3, 2.0)],
    tags={"intrinsics"},
)


def _broadcast_map():
    @fedcore.federated_computation(_server(tf.float32))
    def broadcast_map(s):
        return fedcore.federated_map(_add_half(), fedcore.federated_broadcast(s))

    return broadcast_map


_add("federated_broadcast_then_map_all_equal", _broadcast_map, 2.0, expected=2.5, tags={"intrinsics"})


def _broadcast_sum():
    @fedcore.federated_computation(_server(tf.float32))
    def broadcast_sum(s):
        return fedcore.federated_sum(fedcore.federated_broadcast(s))

    return broadcast_sum


_add(
    "federated_broadcast_then_sum",
    _broadcast_sum,
    2.0,
    num_clients=3,
    expected=6.0,
    tags={"intrinsics", "num_clients"},
)


def _eval_at_server():
    @fedcore.federated_computation
    def eval_at_server():
        return fedcore.federated_eval(_seven(), fedcore.SERVER)

    return eval_at_server


_add("federated_eval_at_server", _eval_at_server, expected=7, tags={"intrinsics"})


def _eval_at_clients():
    @fedcore.federated_computation
    def eval_at_clients():
        return fedcore.federated_eval(_seven(), fedcore.CLIENTS)

    return eval_at_clients


_add(
    "federated_eval_at_clients",
    _eval_at_clients,
    num_clients=3,
    expected=[7, 7, 7],
    tags={"intrinsics", "num_clients"},
)


# --------------------------------------------------------------------------
# federated_map, federated_apply, federated_zip.


def _map():
    @fedcore.federated_computation(_clients(tf.float32))
    def map_add_half(x):
        return fedcore.federated_map(_add_half(), x)

    return map_add_half


_add("federated_map", _map, [1.0, 2.0, 3.0], expected=[1.5, 2.5, 3.5], tags={"intrinsics"})


def _map_federated_fn():
    @fedcore.federated_computation(tf.float32)
    def twice(v):
        return Point(v, v)

    @fedcore.federated_computation(_clients(tf.float32))
    def map_federated_fn(x):
        return fedcore.federated_map(twice, x)

    return map_federated_fn


_add(
    "federated_map_of_a_federated_computation",
    _map_federated_fn,
    [1.0, 2.0],
    expected=[Point(1.0, 1.0), Point(2.0, 2.0)],
    tags={"intrinsics", "lambdas", "containers"},
)


def _map_all_equal():
    @fedcore.federated_computation
    def map_all_equal():
        return fedcore.federated_map(_add_half(), fedcore.federated_value(1.0, fedcore.CLIENTS))

    return map_all_equal


_add("federated_map_all_equal", _map_all_equal, expected=1.5, tags={"intrinsics"})


def _apply():
    @fedcore.federated_computation(_server(tf.float32))
    def apply_add_half(s):
        return fedcore.federated_apply(_add_half(), s)

    return apply_add_half


_add("federated_apply", _apply, 2.0, expected=2.5, tags={"intrinsics"})


def _zip_clients_named():
    @fedcore.federated_computation(_clients(tf.int32), _clients(tf.float32))
    def zip_named(a, b):
        return fedcore.federated_zip(OD(a=a, b=b))

    return zip_named


_add(
    "federated_zip_at_clients_named",
    _zip_clients_named,
    [1, 2],
    [0.5, 1.5],
    expected=[OD(a=1, b=0.5), OD(a=2, b=1.5)],
    tags={"intrinsics", "containers"},
)


def _zip_clients_all_equal():
    @fedcore.federated_computation
    def zip_all_equal():
        return fedcore.federated_zip(
            Point(fedcore.federated_value(1, fedcore.CLIENTS), fedcore.federated_value(2.0, fedcore.CLIENTS))
        )

    return zip_all_equal


_add(
    "federated_zip_at_clients_of_all_equal_values",
    _zip_clients_all_equal,
    num_clients=2,
    expected=[Point(1, 2.0), Point(1, 2.0)],
    tags={"intrinsics", "num_clients", "containers"},
)


def _zip_server():
    @fedcore.federated_computation(_server(tf.int32), _server(tf.float32))
    def zip_at_server(a, b):
        return fedcore.federated_zip(Point(a, b))

    return zip_at_server


_add("federated_zip_at_server", _zip_server, 1, 2.0, expected=Point(1, 2.0), tags={"intrinsics", "containers"})


# --------------------------------------------------------------------------
# Aggregations.


def _sum_int():
    @fedcore.federated_computation(_clients(tf.int32))
    def sum_int(x):
        return fedcore.federated_sum(x)

    return sum_int


_add("federated_sum", _sum_int, [1, 2, 3], expected=6, tags={"intrinsics"})


def _sum_struct():
    @fedcore.federated_computation(_clients(OD(a=tf.int32, b=(tf.float32, [2]))))
    def sum_struct(x):
        return fedcore.federated_sum(x)

    return sum_struct


_add(
    "federated_sum_of_structs",
    _sum_struct,
    [OD(a=1, b=[1.0, 2.0]), OD(a=-3, b=[0.5, 4.0])],
    expected=OD(a=-2, b=np.array([1.5, 6.0])),
    tags={"intrinsics", "containers"},
)


def _mean():
    @fedcore.federated_computation(_clients(tf.float32))
    def mean(x):
        return fedcore.federated_mean(x)

    return mean


_add("federated_mean", _mean, [68.5, 70.3, 69.8], expected=69.53333333, tags={"intrinsics"})


def _mean_vector():
    @fedcore.federated_computation(_clients((tf.float64, [2])))
    def mean_vector(x):
        return fedcore.federated_mean(x)

    return mean_vector


_add(
    "federated_mean_of_float64_vectors",
    _mean_vector,
    [[1.0, 2.0], [2.0, 5.0]],
    expected=np.array([1.5, 3.5]),
    tags={"intrinsics"},
)


def _weighted_mean():
    @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
    def weighted_mean(values, weights):
        return fedcore.federated_mean(values, weights)

    return weighted_mean


_add(
    "federated_mean_weighted",
    _weighted_mean,
    [1.0, 2.0, 3.0],
    [1.0, 1.0, 2.0],
    expected=2.25,
    tags={"intrinsics"},
)


def _min_max_float():
    @fedcore.federated_computation(_clients(tf.float32))
    def min_max(x):
        return fedcore.federated_min(x), fedcore.federated_max(x)

    return min_max


_add("federated_min_and_max", _min_max_float, [3.0, -1.0, 2.0], expected=(-1.0, 3.0), tags={"intrinsics"})


def _min_max_int():
    @fedcore.federated_computation(_clients((tf.int32, [2])))
    def min_max_int(x):
        return OD(min=fedcore.federated_min(x), max=fedcore.federated_max(x))

    return min_max_int


_add(
    "federated_min_and_max_of_int_vectors",
    _min_max_int,
    [[1, 5], [3, -2]],
    expected=OD(min=np.array([1, -2]), max=np.array([3, 5])),
    tags={"intrinsics"},
)


def _aggregate():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def report(total):
        return tf.cast(total, tf.float32) * 2.0 + 1.0

    @fedcore.federated_computation(_clients(tf.int32))
    def aggregate(x):
        return fedcore.federated_aggregate(x, 0, add, add, report)

    return aggregate


_add("federated_aggregate", _aggregate, [1, 2, 3], expected=13.0, tags={"intrinsics"})


def _aggregate_struct():
    @fedcore.tf_computation(((tf.int32, tf.int32), tf.int32))
    def accumulate(acc, v):
        return (acc[0] + v, acc[1] + 1)

    @fedcore.tf_computation(((tf.int32, tf.int32), (tf.int32, tf.int32)))
    def merge(a, b):
        return (a[0] + b[0], a[1] + b[1])

    @fedcore.tf_computation((tf.int32, tf.int32))
    def report(acc):
        return OD(mean=tf.cast(acc[0], tf.float32) / tf.cast(tf.maximum(acc[1], 1), tf.float32), count=acc[1])

    @fedcore.federated_computation(_clients(tf.int32))
    def aggregate_mean(x):
        return fedcore.federated_aggregate(x, (0, 0), accumulate, merge, report)

    return aggregate_mean


_add(
    "federated_aggregate_with_struct_accumulator",
    _aggregate_struct,
    [1, 2, 4],
    expected=OD(mean=7.0 / 3.0, count=3),
    tags={"intrinsics", "containers"},
)


def _secure_sum():
    @fedcore.federated_computation(_clients(tf.int32))
    def secure_sum(x):
        return fedcore.federated_secure_sum(x, 5)

    return secure_sum


_add("federated_secure_sum", _secure_sum, [1, 2, 3], expected=6, tags={"intrinsics"})
_add(
    "federated_secure_sum_out_of_range",
    _secure_sum,
    [1, 7],
    expect_error=ExecutionError,
    tags={"intrinsics", "errors"},
    doc="A client value above max_input must fail the run with ExecutionError.",
)


def _secure_sum_struct():
    @fedcore.federated_computation(_clients(OD(a=tf.int32, b=tf.int32)))
    def secure_sum_struct(x):
        return fedcore.federated_secure_sum(x, 10)

    return secure_sum_struct


_add(
    "federated_secure_sum_of_structs",
    _secure_sum_struct,
    [OD(a=1, b=2), OD(a=3, b=4)],
    expected=OD(a=4, b=6),
    tags={"intrinsics", "containers"},
)


# --------------------------------------------------------------------------
# Sequence intrinsics.


def _sequence_map():
    @fedcore.tf_computation(tf.float32)
    def times_three(v):
        return v * 3.0

    @fedcore.federated_computation(_FLOATS)
    def seq_map(s):
        return fedcore.sequence_map(times_three, s)

    return seq_map


_add("sequence_map_of_a_list", _sequence_map, [1.0, 2.0], expected=[3.0, 6.0], tags={"intrinsics", "datasets"})
_add(
    "sequence_map_of_a_dataset",
    _sequence_map,
    _float_dataset(1.0, 2.0),
    expected=[3.0, 6.0],
    tags={"intrinsics", "datasets"},
)


def _sequence_reduce():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add_square(acc, v):
        return acc + v * v

    @fedcore.federated_computation(_FLOATS)
    def sum_of_squares(s):
        return fedcore.sequence_reduce(s, 0.0, add_square)

    return sum_of_squares


_add("sequence_reduce", _sequence_reduce, [1.0, 2.0, 3.0], expected=14.0, tags={"intrinsics", "datasets"})


def _sequence_sum_struct():
    @fedcore.federated_computation("<a=int32,b=float32>*")
    def seq_sum(s):
        return fedcore.sequence_sum(s)

    return seq_sum


_add(
    "sequence_sum_of_structs_in_a_list",
    _sequence_sum_struct,
    [dict(a=1, b=2.0), dict(a=3, b=4.0)],
    expected=Struct.named(a=4, b=6.0),
    tags={"intrinsics", "datasets"},
)
_add(
    "sequence_sum_of_structs_in_a_dataset",
    _sequence_sum_struct,
    lazy(lambda: tf.data.Dataset.from_tensor_slices(OD(a=[1, 3], b=[2.0, 4.0]))),
    expected=Struct.named(a=4, b=6.0),
    tags={"intrinsics", "datasets"},
)


def _sequence_sum_empty():
    @fedcore.federated_computation(_FLOATS)
    def seq_sum(s):
        return fedcore.sequence_sum(s)

    return seq_sum


_add(
    "sequence_sum_of_an_empty_sequence",
    _sequence_sum_empty,
    [],
    expected=0.0,
    tags={"intrinsics", "datasets", "zeros"},
    doc="The sum of no elements is the zero of the element type (generic_zero's meaning).",
)


def _generic_plus():
    from fedcore.compiler.federated_api import call_intrinsic
    from fedcore.compiler.tracing import to_node

    @fedcore.federated_computation((tf.float32, [3]), (tf.float32, [3]))
    def generic_plus(a, b):
        # Not reachable from the public API: call the intrinsic directly.
        return call_intrinsic("generic_plus", bb.Struct([(None, to_node(a)), (None, to_node(b))]))

    return generic_plus


_add(
    "generic_plus",
    _generic_plus,
    [1.0, 2.0, 3.0],
    [1.0, 1.0, 1.0],
    expected=np.array([2.0, 3.0, 4.0]),
    tags={"intrinsics"},
)


def _generic_zero():
    zero_type = fedcore.to_type(OD(a=(tf.int32, [2]), b=tf.float32))

    @fedcore.federated_computation
    def generic_zero():
        # Not reachable from the public API: the intrinsic at a concrete type.
        return bb.Intrinsic("generic_zero", zero_type)

    return generic_zero


_add("generic_zero", _generic_zero, expected=OD(a=np.array([0, 0]), b=0.0), tags={"intrinsics", "zeros"})


# --------------------------------------------------------------------------
# Aggregates over zero clients (see fedcore/runtime/reference.py).

_add(
    "zero_clients_sum_gives_zeros",
    _sum_struct,
    [],
    expected=OD(a=0, b=np.array([0.0, 0.0])),
    tags={"zero_clients", "zeros"},
)
_add("zero_clients_mean_gives_nan", _mean, [], expected=float("nan"), tags={"zero_clients"})
_add("zero_clients_weighted_mean_gives_nan", _weighted_mean, [], [], expected=float("nan"), tags={"zero_clients"})
_add(
    "zero_clients_min_and_max_of_floats_give_infinities",
    _min_max_float,
    [],
    expected=(float("inf"), float("-inf")),
    tags={"zero_clients"},
)
_add(
    "zero_clients_min_and_max_of_ints_give_dtype_limits",
    _min_max_int,
    [],
    expected=OD(min=np.full([2], np.iinfo(np.int32).max), max=np.full([2], np.iinfo(np.int32).min)),
    tags={"zero_clients"},
)
_add(
    "zero_clients_aggregate_reports_zero",
    _aggregate,
    [],
    expected=1.0,
    tags={"zero_clients"},
    doc="report(zero): 0 * 2 + 1.",
)
_add(
    "zero_clients_aggregate_with_struct_accumulator",
    _aggregate_struct,
    [],
    expected=OD(mean=0.0, count=0),
    tags={"zero_clients", "containers"},
)
_add("zero_clients_secure_sum", _secure_sum, [], expected=0, tags={"zero_clients", "zeros"})


def _map_and_zip():
    @fedcore.federated_computation(_clients(tf.int32), _clients(tf.float32))
    def map_and_zip(a, b):
        return fedcore.federated_map(_add_half(), b), fedcore.federated_zip((a, b))

    return map_and_zip


_add("zero_clients_map_and_zip", _map_and_zip, [], [], expected=([], []), tags={"zero_clients"})


# --------------------------------------------------------------------------
# Lambdas, blocks and selections.


def _nested_computations():
    @fedcore.federated_computation(_clients(tf.float32))
    def inner(x):
        return fedcore.federated_mean(x)

    @fedcore.federated_computation(_clients(tf.float32), _clients(tf.float32))
    def outer(x, y):
        return inner(x), inner(y), inner(x)

    return outer


_add(
    "computation_calling_a_computation",
    _nested_computations,
    [1.0, 2.0],
    [3.0, 5.0],
    expected=(1.5, 4.0, 1.5),
    tags={"lambdas"},
)


def _squared_deviations():
    @fedcore.federated_computation(_clients(tf.float32))
    def center(x):
        return fedcore.federated_broadcast(fedcore.federated_mean(x))

    @fedcore.tf_computation(tf.float32, tf.float32)
    def squared_difference(v, m):
        return (v - m) * (v - m)

    @fedcore.federated_computation(_clients(tf.float32))
    def squared_deviations(x):
        return fedcore.federated_sum(fedcore.federated_map(squared_difference, fedcore.federated_zip((x, center(x)))))

    return squared_deviations


_add(
    "blocks_across_placements",
    _squared_deviations,
    [1.0, 2.0, 3.0, 6.0],
    expected=14.0,
    tags={"lambdas", "intrinsics"},
    doc="mean 3, deviations -2,-1,0,3: squares sum to 14.",
)


def _struct_selection():
    @fedcore.federated_computation(OD(a=tf.int32, b=[tf.float32, tf.string]))
    def select_fields(x):
        return x.b[1], x.a, x["b"][0]

    return select_fields


_add(
    "selection_by_name_and_index",
    _struct_selection,
    OD(a=1, b=[2.0, "s"]),
    expected=("s", 1, 2.0),
    tags={"lambdas", "strings"},
)


def _federated_selection_clients():
    @fedcore.federated_computation(_clients(Point(tf.int32, tf.float32)))
    def select_at_clients(p):
        return fedcore.federated_sum(p.x), fedcore.federated_mean(p[1])

    return select_at_clients


_add(
    "selection_on_client_structs",
    _federated_selection_clients,
    [Point(1, 2.0), Point(3, 4.0)],
    expected=(4, 3.0),
    tags={"lambdas"},
)


def _federated_selection_server():
    @fedcore.federated_computation(_server(Point(tf.int32, tf.float32)))
    def select_at_server(p):
        return p.y, p[0]

    return select_at_server


_add(
    "selection_on_a_server_struct",
    _federated_selection_server,
    Point(1, 2.0),
    expected=(2.0, 1),
    tags={"lambdas"},
)


def _federated_selection_all_equal():
    @fedcore.federated_computation(_clients(Point(tf.int32, tf.float32), all_equal=True))
    def select_all_equal(p):
        return p.y

    return select_all_equal


_add(
    "selection_on_an_all_equal_client_struct",
    _federated_selection_all_equal,
    Point(1, 2.0),
    expected=2.0,
    tags={"lambdas"},
)


def _nested_result():
    @fedcore.federated_computation(_clients(tf.float32))
    def statistics(x):
        return [
            fedcore.federated_sum(x),
            {"mean": fedcore.federated_mean(x), "range": (fedcore.federated_min(x), fedcore.federated_max(x))},
        ]

    return statistics


_add(
    "nested_result_containers",
    _nested_result,
    [1.0, 3.0],
    expected=[4.0, {"mean": 2.0, "range": (1.0, 3.0)}],
    tags={"containers"},
)


# --------------------------------------------------------------------------
# Containers.


def _namedtuple_identity():
    @fedcore.federated_computation(Point(tf.int32, tf.float32))
    def identity(p):
        return p

    return identity


_add(
    "namedtuple_argument_given_as_dict",
    _namedtuple_identity,
    dict(x=1, y=2.0),
    expected=Point(1, 2.0),
    tags={"containers"},
)


def _attrs_identity():
    @fedcore.federated_computation(Pair(a=tf.int32, b=[tf.float32, tf.float32]))
    def identity(p):
        return p

    return identity


_add(
    "attrs_argument_with_nested_list",
    _attrs_identity,
    Pair(1, [2.0, 3.0]),
    expected=Pair(1, [2.0, 3.0]),
    tags={"containers"},
)


def _struct_identity():
    @fedcore.federated_computation("<a=int32,b=<float32,float32>>")
    def identity(s):
        return s

    return identity


_add(
    "struct_type_without_container_gives_Struct",
    _struct_identity,
    dict(a=1, b=[2.0, 3.0]),
    expected=Struct([("a", 1), ("b", (2.0, 3.0))]),
    tags={"containers"},
)


def _client_containers():
    @fedcore.federated_computation(_clients(OD(p=Point(tf.int32, tf.float32), q=Pair(a=tf.string, b=tf.bool))))
    def identity(x):
        return x

    return identity


_add(
    "client_values_in_containers",
    _client_containers,
    [OD(p=Point(1, 2.0), q=Pair("u", True)), OD(p=Point(3, 4.0), q=Pair("v", False))],
    expected=[OD(p=Point(1, 2.0), q=Pair("u", True)), OD(p=Point(3, 4.0), q=Pair("v", False))],
    tags={"containers", "strings"},
)


def _tf_containers():
    @fedcore.tf_computation
    def make_containers():
        return Pair(a=tf.constant(1), b=OD(u=tf.constant(2.0), v=Point(tf.constant("w"), tf.constant([1, 2]))))

    return make_containers


_add(
    "tf_computation_returning_containers",
    _tf_containers,
    expected=Pair(a=1, b=OD(u=2.0, v=Point("w", np.array([1, 2])))),
    tags={"containers", "strings"},
)


# --------------------------------------------------------------------------
# Datasets in and out.

_add(
    "tf_dataset_parameter_given_a_list",
    _weighted_xy,
    [OD(x=1.0, y=2), OD(x=3.0, y=1)],
    expected=5.0,
    tags={"datasets"},
)
_add("tf_dataset_parameter_given_a_dataset", _weighted_xy, lazy(_xy_dataset), expected=5.0, tags={"datasets"})
_add(
    "tf_dataset_result",
    _squares_table,
    3,
    expected=[OD(v=0, sq=0), OD(v=1, sq=1), OD(v=2, sq=4)],
    tags={"datasets", "containers"},
)


def _double_dataset():
    @fedcore.tf_computation(_FLOATS)
    def double(ds):
        return ds.map(lambda v: v * 2.0)

    return double


_add("tf_dataset_in_and_out", _double_dataset, _float_dataset(1.0, 2.5), expected=[2.0, 5.0], tags={"datasets"})


def _clients_weighted_xy():
    @fedcore.federated_computation("{<x=float32,y=int32>*}@CLIENTS")
    def client_datasets(d):
        return fedcore.federated_map(_weighted_xy(), d)

    return client_datasets


_add(
    "client_sequences_given_as_lists",
    _clients_weighted_xy,
    [[dict(x=1.0, y=2)], [dict(x=3.0, y=1), dict(x=1.0, y=1)], []],
    expected=[2.0, 4.0, 0.0],
    tags={"datasets"},
)
_add(
    "client_sequences_given_as_datasets",
    _clients_weighted_xy,
    [lazy(_xy_dataset), lazy(lambda: _xy_dataset().take(1))],
    expected=[5.0, 2.0],
    tags={"datasets"},
)


def _clients_sequence_sum():
    @fedcore.federated_computation(_FLOATS)
    def local_sum(s):
        return fedcore.sequence_sum(s)

    @fedcore.federated_computation("{float32*}@CLIENTS")
    def client_sums(d):
        return fedcore.federated_map(local_sum, d), fedcore.federated_sum(fedcore.federated_map(local_sum, d))

    return client_sums


_add(
    "client_float_sequences_as_lists_of_lists",
    _clients_sequence_sum,
    [[1.0, 2.0], [3.0], []],
    expected=([3.0, 3.0, 0.0], 6.0),
    tags={"datasets", "intrinsics"},
)
_add(
    "client_float_sequences_as_lists_of_datasets",
    _clients_sequence_sum,
    [_float_dataset(1.0, 2.0), _float_dataset(3.0)],
    expected=([3.0, 3.0], 6.0),
    tags={"datasets", "intrinsics"},
)


def _server_dataset_result():
    @fedcore.federated_computation(_server(tf.int32))
    def table_at_server(n):
        return fedcore.federated_apply(_squares_table(), n)

    return table_at_server


_add(
    "server_dataset_result",
    _server_dataset_result,
    2,
    expected=[OD(v=0, sq=0), OD(v=1, sq=1)],
    tags={"datasets", "containers"},
)


# --------------------------------------------------------------------------
# Polymorphism: computations without declared types, called at several types.


@functools.lru_cache(maxsize=None)
def _poly_swap():
    @fedcore.federated_computation
    def swap(x, y):
        return OD(first=y, second=x)

    return swap


_add("polymorphic_federated_scalars", _poly_swap, 1, 2.0, expected=OD(first=2.0, second=1), tags={"polymorphism"})
_add(
    "polymorphic_federated_string_and_list",
    _poly_swap,
    "a",
    [1, 2],
    expected=OD(first=[1, 2], second="a"),
    tags={"polymorphism", "strings"},
)
_add(
    "polymorphic_federated_keywords_out_of_order",
    _poly_swap,
    kwargs=dict(y=2, x=1),
    expected=OD(first=2, second=1),
    tags={"polymorphism", "keywords"},
)


@functools.lru_cache(maxsize=None)
def _poly_double():
    @fedcore.tf_computation
    def double(x):
        return x * 2

    return double


_add("polymorphic_tf_int", _poly_double, 3, expected=6, tags={"polymorphism"})
_add("polymorphic_tf_float", _poly_double, 1.25, expected=2.5, tags={"polymorphism"})
_add(
    "polymorphic_tf_int64_array",
    _poly_double,
    np.array([1, 2], np.int64),
    expected=np.array([2, 4]),
    tags={"polymorphism"},
)


def _poly_dataset_sum():
    @fedcore.tf_computation
    def total(ds):
        return ds.reduce(np.int64(0), lambda acc, v: acc + v)

    return total


_add(
    "polymorphic_tf_dataset",
    _poly_dataset_sum,
    lazy(lambda: tf.data.Dataset.range(5)),
    expected=10,
    tags={"polymorphism", "datasets"},
)


def _poly_calls_poly():
    @fedcore.federated_computation
    def apply_double(x):
        return _poly_double()(x)

    return apply_double


_add("polymorphic_federated_calling_polymorphic_tf", _poly_calls_poly, 1.5, expected=3.0, tags={"polymorphism"})


# --------------------------------------------------------------------------
# Strings.


def _hello():
    return fedcore.federated_computation(lambda: "Hello, World!")


_add("hello_world", _hello, expected="Hello, World!", tags={"strings"})


def _client_strings():
    @fedcore.tf_computation(tf.string)
    def exclaim(s):
        return tf.strings.join([s, "!"])

    @fedcore.federated_computation(_clients(tf.string))
    def shout(names):
        return fedcore.federated_map(exclaim, names)

    return shout


_add("strings_at_clients", _client_strings, ["a", "bc"], expected=["a!", "bc!"], tags={"strings"})


# --------------------------------------------------------------------------
# Several Python parameters, keyword arguments.


def _federated_two_params():
    @fedcore.federated_computation(tf.int32, tf.float32)
    def two_params(a, b):
        return _two_params_tf()(b=b, a=a)

    return two_params


_add(
    "keyword_arguments_out_of_order",
    _federated_two_params,
    kwargs=dict(b=2.0, a=1),
    expected=3.0,
    tags={"keywords"},
)
_add("positional_and_keyword_arguments", _two_params_tf, 1, kwargs=dict(b=2.5), expected=3.5, tags={"keywords"})


def _client_keywords():
    @fedcore.federated_computation(_clients(tf.float32), _server(tf.float32))
    def scaled_sum(values, scale):
        @fedcore.tf_computation(tf.float32, tf.float32)
        def times(v, s):
            return v * s

        return fedcore.federated_sum(
            fedcore.federated_map(times, fedcore.federated_zip((values, fedcore.federated_broadcast(scale))))
        )

    return scaled_sum


_add(
    "keyword_arguments_at_clients_and_server",
    _client_keywords,
    kwargs=dict(scale=2.0, values=[1.0, 2.0]),
    expected=6.0,
    tags={"keywords"},
)


# --------------------------------------------------------------------------
# The seed tutorial: aggregating client metrics.


def _metrics():
    metrics_type = OD(num_examples=tf.int32, loss=tf.float32, accuracy=tf.float32)

    @fedcore.federated_computation(_clients(metrics_type))
    def aggregate_metrics(m):
        return OD(
            num_examples=fedcore.federated_sum(m.num_examples),
            loss=fedcore.federated_mean(m.loss, m.num_examples),
            accuracy=fedcore.federated_mean(m.accuracy, m.num_examples),
        )

    return aggregate_metrics


_add(
    "tutorial_metrics_aggregation",
    _metrics,
    [OD(num_examples=2, loss=1.0, accuracy=0.5), OD(num_examples=6, loss=2.0, accuracy=0.75)],
    expected=OD(num_examples=8, loss=1.75, accuracy=0.6875),
    tags={"tutorial", "containers"},
)
_add(
    "zero_clients_tutorial_metrics",
    _metrics,
    [],
    expected=OD(num_examples=0, loss=float("nan"), accuracy=float("nan")),
    tags={"tutorial", "zero_clients"},
)


# --------------------------------------------------------------------------
# Rounds: computations shaped (<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>), the shape
# that deployment forms (fedcore.compiler.forms) and distributed runtimes cut into pieces.

_server = fedcore.type_at_server


def _round_count_and_mean():
    @fedcore.tf_computation(tf.int32)
    def increment(n):
        return n + 1

    @fedcore.federated_computation(_server(tf.int32), _clients(tf.float32))
    def count_and_mean(rounds, data):
        return fedcore.federated_map(increment, rounds), fedcore.federated_mean(data)

    return count_and_mean


_add("round_count_and_mean", _round_count_and_mean, 4, [1.0, 2.0, 6.0], expected=(5, 3.0), tags={"rounds"})
_add(
    "round_zero_clients_mean_is_nan",
    _round_count_and_mean,
    0,
    [],
    expected=(1, float("nan")),
    tags={"rounds", "zero_clients"},
)


def _round_broadcast_scale_sum():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def scale(x, factor):
        return x * factor

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32))
    def broadcast_scale_sum(factor, data):
        scaled = fedcore.federated_map(scale, fedcore.federated_zip((data, fedcore.federated_broadcast(factor))))
        return factor, fedcore.federated_sum(scaled)

    return broadcast_scale_sum


_add("round_broadcast_map_sum", _round_broadcast_scale_sum, 2.0, [1.0, 2.0, 3.5], expected=(2.0, 13.0), tags={"rounds"})


def _round_dataset_weighted_mean():
    @fedcore.tf_computation(_FLOATS, tf.float32)
    def local_stats(ds, offset):
        total, count = ds.reduce((0.0, 0.0), lambda acc, x: (acc[0] + x - offset, acc[1] + 1.0))
        return OD(mean=total / tf.maximum(count, 1.0), count=count)

    @fedcore.tf_computation(tf.float32, tf.float32)
    def step(offset, delta):
        return offset + 0.5 * delta

    @fedcore.federated_computation(_server(tf.float32), _clients(_FLOATS))
    def dataset_weighted_mean(offset, data):
        stats = fedcore.federated_map(local_stats, fedcore.federated_zip((data, fedcore.federated_broadcast(offset))))
        delta = fedcore.federated_mean(stats.mean, weight=stats.count)
        return fedcore.federated_map(step, fedcore.federated_zip((offset, delta))), delta

    return dataset_weighted_mean


_add(
    "round_datasets_weighted_mean",
    _round_dataset_weighted_mean,
    1.0,
    [_float_dataset(1.0, 2.0, 3.0), _float_dataset(5.0)],
    expected=(1.0 + 0.5 * 1.75, 1.75),
    tags={"rounds", "datasets"},
)


def _round_min_max():
    @fedcore.federated_computation(_server(OD(w=fedcore.TensorType(tf.float32, [2]), step=tf.int32)), _clients(tf.int32))
    def min_max(state, data):
        return state, OD(low=fedcore.federated_min(data), high=fedcore.federated_max(data))

    return min_max


_add(
    "round_state_struct_min_max",
    _round_min_max,
    OD(w=np.array([1.0, 2.0], np.float32), step=3),
    [4, -2, 9],
    expected=(OD(w=np.array([1.0, 2.0], np.float32), step=3), OD(low=-2, high=9)),
    tags={"rounds", "containers"},
)


def _round_aggregate_secure_sum():
    @fedcore.tf_computation(tf.int32, tf.int32)
    def add(a, b):
        return a + b

    @fedcore.tf_computation(tf.int32)
    def double(total):
        return total * 2

    @fedcore.tf_computation(tf.int32, tf.int32)
    def combine(n, secure_total):
        return n + secure_total

    @fedcore.federated_computation(_server(tf.int32), _clients(tf.int32))
    def aggregate_and_secure_sum(n, data):
        doubled = fedcore.federated_aggregate(data, 0, add, add, double)
        secure = fedcore.federated_secure_sum(data, 10)
        return fedcore.federated_map(combine, fedcore.federated_zip((n, secure))), doubled

    return aggregate_and_secure_sum


_add(
    "round_aggregate_and_secure_sum",
    _round_aggregate_secure_sum,
    100,
    [1, 2, 7],
    expected=(110, 20),
    tags={"rounds"},
)


def _round_constant_at_clients():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def add(x, y):
        return x + y

    @fedcore.federated_computation(_server(tf.string), _clients(tf.float32))
    def constant_at_clients(label, data):
        shifted = fedcore.federated_map(add, fedcore.federated_zip((data, fedcore.federated_value(10.0, fedcore.CLIENTS))))
        return label, fedcore.federated_zip(OD(total=fedcore.federated_sum(shifted), mean=fedcore.federated_mean(data)))

    return constant_at_clients


_add(
    "round_constant_at_clients_and_string_state",
    _round_constant_at_clients,
    "run-1",
    [1.0, 3.0],
    expected=("run-1", OD(total=24.0, mean=2.0)),
    tags={"rounds", "strings", "containers"},
)


def _round_two_dependent_rounds():
    @fedcore.tf_computation(tf.float32, tf.float32)
    def distance(x, center):
        return tf.abs(x - center)

    @fedcore.federated_computation(_server(tf.float32), _clients(tf.float32))
    def two_rounds(state, data):
        center = fedcore.federated_mean(data)
        spread = fedcore.federated_mean(
            fedcore.federated_map(distance, fedcore.federated_zip((data, fedcore.federated_broadcast(center))))
        )
        return state, spread

    return two_rounds


_add(
    "round_needing_two_dependent_rounds",
    _round_two_dependent_rounds,
    0.0,
    [1.0, 2.0, 6.0],
    expected=(0.0, 2.0),
    tags={"rounds", "two_rounds"},
    doc="Its second aggregation needs the broadcast of the first: it runs, but no deployment form holds it.",
)


# --------------------------------------------------------------------------
# Bad arguments: TypeError subclasses, never AttributeError, KeyError or IndexError.

_bad = {"errors"}
_add(
    "error_client_counts_disagree",
    _weighted_mean,
    [1.0, 2.0],
    [1.0],
    expect_error=ArgumentError,
    tags=_bad,
)
_add("error_float_for_int32", _sum_int, [1, 2.5], expect_error=ArgumentError, tags=_bad)
_add("error_bool_for_int32", _two_params_tf, True, 2.0, expect_error=ArgumentError, tags=_bad)
_add("error_int32_overflow", _two_params_tf, 2**40, 1.0, expect_error=ArgumentError, tags=_bad)
_add("error_string_for_float", _mean, [1.0, "2.0"], expect_error=ArgumentError, tags=_bad)
_add("error_wrong_struct_names", _namedtuple_identity, dict(x=1, z=2.0), expect_error=ArgumentError, tags=_bad)
_add(
    "error_wrong_namedtuple_fields",
    _namedtuple_identity,
    collections.namedtuple("Other", ["x", "z"])(1, 2.0),
    expect_error=ArgumentError,
    tags=_bad,
)
_add("error_struct_too_long", _attrs_identity, Pair(1, [2.0, 3.0, 4.0]), expect_error=ArgumentError, tags=_bad)
_add("error_scalar_for_client_values", _sum_int, 3, expect_error=ArgumentError, tags=_bad)
_add(
    "error_namedtuple_for_client_values",
    _federated_selection_clients,
    Point(1, 2.0),
    expect_error=ArgumentError,
    tags=_bad,
)
_add(
    "error_dataset_for_client_values",
    _mean,
    _float_dataset(1.0, 2.0),
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
_add(
    "error_dataset_of_wrong_elements",
    _weighted_xy,
    _float_dataset(1.0),
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
_add(
    "error_bad_element_in_client_sequence",
    _clients_sequence_sum,
    [[1.0, "x"]],
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
_add("error_wrong_shape", _generic_plus, [1.0, 2.0], [1.0, 2.0, 3.0], expect_error=ArgumentError, tags=_bad)
_add(
    "error_missing_argument",
    _federated_two_params,
    kwargs=dict(a=1),
    expect_error=FederatedTypeError,
    tags=_bad | {"keywords"},
)
_add("error_no_arguments", _mean, expect_error=ArgumentError, tags=_bad)
_add("error_too_many_arguments", _federated_two_params, 1, 2.0, 3, expect_error=FederatedTypeError, tags=_bad)
_add(
    "error_unexpected_keyword",
    _federated_two_params,
    1,
    kwargs=dict(c=2.0),
    expect_error=FederatedTypeError,
    tags=_bad | {"keywords"},
)
_add("error_argument_for_no_parameter", _hello, 1, expect_error=ArgumentError, tags=_bad)
_add("error_polymorphic_uninferable", _poly_double, object(), expect_error=ArgumentError, tags=_bad | {"polymorphism"})
_add(
    "error_polymorphic_dict_with_non_string_keys",
    _poly_double,
    {1: 2},
    expect_error=ArgumentError,
    tags=_bad | {"polymorphism"},
)
_add(
    "error_polymorphic_missing_argument",
    _poly_swap,
    1,
    expect_error=FederatedTypeError,
    tags=_bad | {"polymorphism"},
)


__all__ = [
    "CASES",
    "Case",
    "Failure",
    "Report",
    "assert_values_equal",
    "exercised_intrinsics",
    "get_case",
    "intrinsic_uris",
    "lazy",
    "make_executor",
    "parametrize",
    "pytest_params",
    "run_all",
    "run_case",
    "select",
]

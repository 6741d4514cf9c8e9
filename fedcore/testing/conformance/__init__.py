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

The harness is in ``case`` (cases, the registry, ``select``), ``compare``
(``assert_values_equal``) and ``run`` (running cases, reports, pytest
helpers); the cases are in ``cases``, one module per theme.
"""

from fedcore.testing.conformance.case import (
    CASES,
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Case,
    ErrorSpec,
    Lazy,
    get_case,
    lazy,
    select,
)
from fedcore.testing.conformance.compare import assert_values_equal
from fedcore.testing.conformance.run import (
    ExecutorSpec,
    Failure,
    Report,
    _Outcome,
    _run,
    exercised_intrinsics,
    intrinsic_uris,
    make_executor,
    parametrize,
    pytest_params,
    run_all,
    run_case,
)
from fedcore.testing.conformance import cases  # noqa: F401 -- importing it registers every case in CASES
from fedcore.testing.conformance.cases.common import OD, Pair, Point  # the containers in the cases' results

__all__ = [
    "CASES",
    "Case",
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "Failure",
    "Lazy",
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

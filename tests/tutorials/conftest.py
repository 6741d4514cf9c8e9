"""The executors every tutorial test runs on: the reference interpreter and the TensorFlow executor."""

import pytest

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor

EXECUTORS = {
    "reference": fedcore.ReferenceExecutor,
    "tensorflow": TensorFlowExecutor,
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request):
    """Runs the test's calls of computations on one executor (a fresh one per test)."""
    with fedcore.execution_context(EXECUTORS[request.param]()) as chosen:
        yield chosen

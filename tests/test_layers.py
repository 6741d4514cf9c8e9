"""The front end stands alone: the compiler imports nothing of the runtime, which installs itself below it.

The full import contracts live in setup.cfg ([importlinter]) and are checked by
``lint-imports`` (scripts/test.sh runs it before pytest).
"""

import subprocess
import sys
import textwrap

import pytest

import fedcore
from fedcore.compiler import context
from fedcore.runtime import execution


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_the_compiler_imports_no_runtime_module():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("fedcore")
    front = sorted(m for m in graph.find_descendants("fedcore.compiler") if m != "fedcore.compiler.commands")
    assert "fedcore.compiler.computation" in front
    for upper in ("fedcore.runtime", "fedcore.learning", "fedcore.simulation", "fedcore.cli"):
        for module in front:
            chain = graph.find_shortest_chain(importer=module, imported=upper, as_packages=True)
            assert chain is None, f"{module} imports {upper}: {' -> '.join(chain)}"


def test_tracing_needs_no_runtime_and_running_says_what_is_missing():
    result = _run(
        """
        import importlib.util
        import sys
        import types

        # The package without its __init__ (which imports the runtime too): only what the compiler imports loads.
        package = types.ModuleType("fedcore")
        package.__path__ = importlib.util.find_spec("fedcore").submodule_search_locations
        sys.modules["fedcore"] = package

        import tensorflow as tf
        from fedcore.compiler import federated_api as api
        from fedcore.compiler.computation import federated_computation, tf_computation
        from fedcore.types import type_at_clients

        add_one = tf_computation(lambda x: x + 1, tf.int32)

        @federated_computation(type_at_clients(tf.int32))
        def round_(x):
            return api.federated_sum(api.federated_map(add_one, x))

        assert not [m for m in sys.modules if m.startswith("fedcore.runtime")], sorted(sys.modules)
        print(round_.to_ir_string())
        try:
            round_([1, 2])
        except RuntimeError as e:
            print("refused:", e)
        import fedcore.runtime  # installs the execution context below the front end
        print("ran:", round_([1, 2]))
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fc1=federated_map(<comp#" in result.stdout
    assert "refused: no execution context is installed" in result.stdout
    assert "ran: 5" in result.stdout


def test_the_runtime_sits_at_the_bottom_of_the_context_stack():
    assert isinstance(context.get_default_context(), execution.ExecutionContext)
    executor = fedcore.ReferenceExecutor()
    with fedcore.execution_context(executor):
        assert isinstance(context.invoking_context(), execution.ExecutionContext)
        assert context.invoking_context().executor is executor
        assert fedcore.runtime.current_executor() is executor
    assert context.invoking_context() is context.get_default_context()


def test_a_context_pushed_on_the_stack_receives_calls():
    calls = []

    class Recording:
        def invoke(self, comp, args, kwargs):
            calls.append((comp.name, args, kwargs))
            return "recorded"

    @fedcore.tf_computation(fedcore.to_type("int32"))
    def double(x):
        return x * 2

    with context.pushed(Recording()):
        assert double(4) == "recorded"
    assert calls == [("double", (4,), {})]
    assert double(4) == 8

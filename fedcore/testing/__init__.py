"""Testing helpers for fedcore.

``fedcore.testing.conformance`` is the executor conformance suite: a shared
body of cases that any executor must run with the same results as the
reference interpreter.  See docs/executors.md.
"""

from fedcore.testing import conformance

__all__ = ["conformance"]

"""The reference interpreter: simple and obviously correct, the oracle of the conformance suite."""

from fedcore.runtime.reference.interpreter import NAME, Interpreter, ReferenceExecutor
from fedcore.runtime.reference.rules import RULES, call_tf, plus, zero

__all__ = ["NAME", "Interpreter", "RULES", "ReferenceExecutor", "call_tf", "plus", "zero"]

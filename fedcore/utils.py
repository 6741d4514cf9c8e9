"""Names from TFF's early ``tff.utils``: ``IterativeProcess``, the same class as ``fedcore.templates``'."""

from fedcore.learning.iterative_process import IterativeProcess

__all__ = ["IterativeProcess"]

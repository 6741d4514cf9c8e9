"""TFF's ``tff.templates`` names: the processes that algorithms return.

``IterativeProcess`` is ``fedcore.learning.IterativeProcess`` (and
``fedcore.utils.IterativeProcess``); ``LearningProcess`` and
``LearningProcessOutput`` are ``fedcore.learning.templates``' (TFF's
``tff.learning.templates``).
"""

from fedcore.learning.iterative_process import IterativeProcess
from fedcore.learning.templates import LearningProcess, LearningProcessOutput

__all__ = ["IterativeProcess", "LearningProcess", "LearningProcessOutput"]

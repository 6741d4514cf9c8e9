"""TFF's ``tff.tensorflow`` names: ``computation`` is ``fedcore.tf_computation``."""

from fedcore.compiler.computation import tf_computation

computation = tf_computation

__all__ = ["computation"]

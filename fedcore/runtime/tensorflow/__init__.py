"""The TensorFlow backend: each computation compiled into one tf.function (see ``executor``)."""

from fedcore.runtime.tensorflow.executor import NAME, TensorFlowExecutor
from fedcore.runtime.tensorflow.lowering import STRATEGIES
from fedcore.runtime.tensorflow.tables import BATCHED, RULES, NotVectorizable

__all__ = ["BATCHED", "NAME", "NotVectorizable", "RULES", "STRATEGIES", "TensorFlowExecutor"]

"""Federated learning built on the federated core.

Models (``Model``, Keras models via ``from_keras_model``), training processes
(``build_federated_averaging_process``, ``build_federated_sgd_process``),
evaluation (``build_federated_evaluation``) and functional optimizers
(``fedcore.learning.optimizers``).  TFF's current names are here too:
``algorithms`` (``build_weighted_fed_avg``, ``build_fed_eval``), ``models``
(``from_keras_model``), ``templates`` (``LearningProcess``) and
``ClientWeighting``.  Everything here is written with the
public core (``fedcore.federated_computation``, ``fedcore.tf_computation``
and the federated intrinsics) and runs on any executor.
"""

from fedcore.learning import aggregators, optimizers
from fedcore.learning.aggregators import Aggregator, DPAggregator, MeanAggregator, SecureAggregator
from fedcore.learning.federated_averaging import build_federated_averaging_process
from fedcore.learning.federated_evaluation import build_federated_evaluation
from fedcore.learning.federated_sgd import build_federated_sgd_process
from fedcore.learning.iterative_process import IterativeProcess
from fedcore.learning.keras_utils import KerasModel, from_compiled_keras_model, from_keras_model
from fedcore.learning.model import BatchOutput, Model, ModelWeights, TrainableModel
from fedcore.learning.training import ServerState
from fedcore.learning.checkpoint import Checkpoint, CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from fedcore.learning.rounds import DroppedClient, DropoutPolicy, RoundFailedError, RoundResult, run_round
from fedcore.learning import algorithms, models, templates  # noqa: E402  (TFF's names, over the above)
from fedcore.learning.algorithms import ClientWeighting  # noqa: E402

__all__ = [
    "Aggregator",
    "DPAggregator",
    "MeanAggregator",
    "SecureAggregator",
    "aggregators",
    "BatchOutput",
    "ClientWeighting",
    "algorithms",
    "models",
    "templates",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "DroppedClient",
    "DropoutPolicy",
    "RoundFailedError",
    "RoundResult",
    "load_checkpoint",
    "run_round",
    "save_checkpoint",
    "IterativeProcess",
    "KerasModel",
    "Model",
    "ModelWeights",
    "ServerState",
    "TrainableModel",
    "build_federated_averaging_process",
    "build_federated_evaluation",
    "build_federated_sgd_process",
    "from_compiled_keras_model",
    "from_keras_model",
    "optimizers",
]

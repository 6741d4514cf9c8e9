"""The interface between a model and the federated learning algorithms.

A ``Model`` owns its variables (``tf.Variable`` s or Keras variables) in three
groups: the trainable and non-trainable weights, which the server keeps and
broadcasts, and the local variables, which only live on a client during one
round (metric counters, for instance).  The algorithms read a model's weights
under their variable names, so that types print them by name:
``<trainable=<weights=float32[784,10],bias=float32[10]>,non_trainable=<>>``.
"""

from __future__ import annotations

import abc
import collections
from typing import Any, List, Optional

import attrs

__all__ = ["BatchOutput", "Model", "TrainableModel", "ModelWeights"]


class BatchOutput(collections.namedtuple("BatchOutput", ["loss", "predictions", "num_examples"], defaults=(None,))):
    """What ``forward_pass`` returns for one batch.

    ``loss`` is the scalar loss to minimize, ``predictions`` the model's
    output, and ``num_examples`` how many examples the batch held.  When
    ``num_examples`` is left out, the size of the batch's first tensor along
    its first axis is used.
    """

    __slots__ = ()


@attrs.frozen
class ModelWeights:
    """A model's weights by name: ``trainable`` and ``non_trainable`` map names to values."""

    trainable: Any
    non_trainable: Any


class Model(abc.ABC):
    """A model that the federated learning algorithms can train and evaluate.

    Subclasses create their variables once, in ``__init__``, and implement
    the members below.  ``forward_pass`` and ``report_local_outputs`` are
    TensorFlow code: they run inside ``fedcore.tf_computation`` s, may be
    ``tf.function`` s, and may update the local variables (metric sums, say).
    ``federated_output_computation`` is a federated computation that takes the
    local outputs of all clients, ``{T}@CLIENTS``, and aggregates them on the
    server.
    """

    @property
    @abc.abstractmethod
    def trainable_variables(self) -> List[Any]:
        """The variables that training changes."""

    @property
    @abc.abstractmethod
    def non_trainable_variables(self) -> List[Any]:
        """Variables that are part of the model but that gradients don't change."""

    @property
    @abc.abstractmethod
    def local_variables(self) -> List[Any]:
        """Variables of one client's work, such as metric counters; reset every round."""

    @property
    @abc.abstractmethod
    def input_spec(self) -> Any:
        """The structure of ``tf.TensorSpec`` s that a batch has."""

    @abc.abstractmethod
    def forward_pass(self, batch_input: Any, training: bool = True) -> BatchOutput:
        """Runs the model on a batch and updates the local variables; returns a BatchOutput."""

    @abc.abstractmethod
    def report_local_outputs(self) -> Any:
        """This client's outputs (a structure of tensors), read from the local variables."""

    @property
    @abc.abstractmethod
    def federated_output_computation(self) -> Any:
        """A federated computation aggregating the local outputs of all clients."""


class TrainableModel(Model):
    """A Model that also knows how to train itself on a batch."""

    @abc.abstractmethod
    def train_on_batch(self, batch_input: Any) -> BatchOutput:
        """Runs a forward pass, updates the trainable variables, and returns the BatchOutput."""


def check_model(model: Any, where: str) -> Model:
    if not isinstance(model, Model):
        raise TypeError(
            f"{where} must return a fedcore.learning.Model, got {model!r}; wrap a Keras model "
            "with fedcore.learning.from_keras_model"
        )
    return model


def batch_size(batch_input: Any) -> Optional[Any]:
    """The first axis' size of the first tensor in a batch (or None if it has none)."""
    import tensorflow as tf

    from fedcore.learning import _nest

    for leaf in _nest.flatten(batch_input):
        if hasattr(leaf, "shape") and len(leaf.shape) > 0:
            return tf.shape(leaf)[0]
    return None

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

    def assign_weights_to(self, model: Any) -> None:
        """Assigns these weights to the variables of ``model``, as TFF's ``ModelWeights.assign_weights_to``.

        ``model`` is a Keras model (such as a fresh copy of the one that ``model_fn``
        wraps), a model made by ``fedcore.learning.from_keras_model``, or another
        ``fedcore.learning.Model``.  A Keras model's weights are matched by name
        (``dense/kernel``, the names in the weights' type); another Model's
        variables are taken in order.  Raises ValueError, naming the weight,
        when a name is missing or unexpected or a shape or dtype differs; then
        no variable has been changed.
        """
        import numpy as np

        keras_model = getattr(model, "keras_model", None) if isinstance(model, Model) else model
        groups = (("trainable", self.trainable), ("non_trainable", self.non_trainable))
        if keras_model is not None:
            if not hasattr(keras_model, "trainable_variables") or not hasattr(keras_model, "non_trainable_variables"):
                raise TypeError(f"expected a Keras model or a fedcore.learning.Model, got {model!r}")
            from fedcore.learning.keras_utils import keras_weight_names

            names = keras_weight_names(keras_model)
            targets = [
                (kind, [(names[id(v)], v) for v in getattr(keras_model, f"{kind}_variables")]) for kind, _ in groups
            ]
        else:
            targets = [
                (kind, [(None, v) for v in getattr(model, f"{kind}_variables")]) for kind, _ in groups
            ]
        plan = []
        for (kind, values), (_, variables) in zip(groups, targets):
            items = list(_named_items(values))
            if keras_model is not None and all(name is not None for name, _ in items):
                given = dict(items)
                wanted = [n for n, _ in variables]
                missing = [n for n in wanted if n not in given]
                unexpected = [n for n in given if n not in wanted]
                if missing or unexpected:
                    raise ValueError(
                        f"the {kind} weights do not fit the model: "
                        + "; ".join(
                            part for part in (
                                f"the model has {', '.join(missing)}, which the weights lack" if missing else "",
                                f"the weights have {', '.join(unexpected)}, which the model lacks"
                                if unexpected else "",
                            ) if part
                        )
                    )
                pairs = [(n, v, given[n]) for n, v in variables]
            else:
                if len(items) != len(variables):
                    raise ValueError(
                        f"the model has {len(variables)} {kind} variables, the weights {len(items)}"
                    )
                pairs = [(name or target or f"#{i}", v, value)
                         for i, ((name, value), (target, v)) in enumerate(zip(items, variables))]
            for name, variable, value in pairs:
                array = np.asarray(value)
                shape = tuple(variable.shape)
                dtype = np.dtype(getattr(variable.dtype, "as_numpy_dtype", variable.dtype))
                if tuple(array.shape) != shape or array.dtype != dtype:
                    raise ValueError(
                        f"the {kind} weight {name} is {array.dtype.name}{list(array.shape)}, but the model's "
                        f"variable is {dtype.name}{list(shape)}"
                    )
                plan.append((variable, array))
        for variable, array in plan:
            variable.assign(array)


def _named_items(values: Any):
    """(name, value) pairs of a mapping, a named structure or a sequence (names None)."""
    if hasattr(values, "items") and callable(values.items):
        return list(values.items())
    if hasattr(values, "_asdict"):
        return list(values._asdict().items())
    if isinstance(values, (list, tuple)):
        return [(None, v) for v in values]
    raise TypeError(f"expected the weights by name (a mapping) or a list of them, got {type(values).__name__}")


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

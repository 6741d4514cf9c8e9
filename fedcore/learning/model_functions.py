"""A Model seen as pure functions of its weights, for use inside tf_computations.

A ``fedcore.tf_computation`` is traced once into a function of its inputs,
and the TensorFlow executor may run it for all clients at once.  So the
algorithms never keep state in a model's variables between calls; instead
they pass the weights and the local variables in and get them back out:

    forward(weights, local, batch, training) -> (BatchOutput, weights, local)

Two implementations:

* ``VariableFunctions`` works for any ``Model``: it assigns the given values
  to the model's variables, runs the model's own TensorFlow code, and reads
  the variables back (assign, run, read).  The traced computation is correct
  wherever calls of it run one after the other, but it is stateful: it
  captures the variables, so it cannot be vectorized across clients.
* Keras models (``fedcore.learning.from_keras_model``) provide pure
  functions built on Keras 3's ``stateless_call``, with no variable access.

``ModelFunctions.stateful`` says which kind a model got.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fedcore.compiler.tf_function import call_user_code
from fedcore.learning import _nest
from fedcore.learning.model import BatchOutput, Model, ModelWeights, TrainableModel, batch_size
from fedcore.types import StructType, TensorType, to_type

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_./\-]")


def field(value: Any, name: str) -> Any:
    """``value.name`` or ``value[name]``, whichever the container supports."""
    if isinstance(value, dict):
        return value[name]
    return getattr(value, name)


def clean_name(name: str) -> str:
    """A variable name as a fedcore element name: no ``:0`` suffix, odd characters as ``_``."""
    name = re.sub(r":\d+$", "", name)
    name = _BAD_NAME_CHARS.sub("_", name)
    if not name or not re.match(r"[A-Za-z_]", name[0]):
        name = "v_" + name
    return name


def unique_names(names: Sequence[str]) -> List[str]:
    """``names`` with repeats made unique by ``_1``, ``_2``, ... suffixes."""
    seen: Dict[str, int] = {}
    taken = set(names)
    out = []
    for n in names:
        if n not in seen:
            seen[n] = 0
            out.append(n)
            continue
        k = seen[n]
        while True:
            k += 1
            candidate = f"{n}_{k}"
            if candidate not in taken:
                break
        seen[n] = k
        taken.add(candidate)
        out.append(candidate)
    return out


def variable_name(v: Any) -> str:
    return clean_name(getattr(v, "path", None) or v.name)


def tensor_type_of(v: Any) -> TensorType:
    return TensorType(tf.as_dtype(v.dtype), tuple(v.shape))


def named_struct_type(names: Sequence[str], variables: Sequence[Any]) -> StructType:
    return StructType([(n, tensor_type_of(v)) for n, v in zip(names, variables)], container=collections.OrderedDict)


def read(v: Any) -> tf.Tensor:
    return tf.identity(tf.convert_to_tensor(v))


def snapshot(variables: Sequence[Any]) -> List[np.ndarray]:
    return [np.array(tf.convert_to_tensor(v).numpy()) for v in variables]


class ModelFunctions:
    """The pure-function view of a Model that the algorithms use.

    Attributes: ``model``, ``input_type`` (the fedcore type of a batch),
    ``weights_type`` (``<trainable=<...>,non_trainable=<...>>``),
    ``local_type`` (the local variables by name), ``initial_weights``,
    ``initial_local``, ``stateful``.
    """

    model: Model
    stateful: bool = False
    #: A functional optimizer the model comes with (a compiled Keras model's), or None.
    default_optimizer = None

    def __init__(self, model: Model, trainable_names, non_trainable_names, local_names):
        self.model = model
        try:
            self.input_type = to_type(model.input_spec)
        except (TypeError, ValueError) as e:
            raise TypeError(f"the model's input_spec {model.input_spec!r} is not a valid fedcore type: {e}") from None
        trainable, non_trainable, local = (
            list(model.trainable_variables),
            list(model.non_trainable_variables),
            list(model.local_variables),
        )
        self._trainable_names = list(trainable_names)
        self._non_trainable_names = list(non_trainable_names)
        self._local_names = list(local_names)
        self.weights_type = StructType(
            [
                ("trainable", named_struct_type(self._trainable_names, trainable)),
                ("non_trainable", named_struct_type(self._non_trainable_names, non_trainable)),
            ],
            container=ModelWeights,
        )
        self.local_type = named_struct_type(self._local_names, local)
        self.initial_weights = ModelWeights(
            collections.OrderedDict(zip(self._trainable_names, snapshot(trainable))),
            collections.OrderedDict(zip(self._non_trainable_names, snapshot(non_trainable))),
        )
        self.initial_local = collections.OrderedDict(zip(self._local_names, snapshot(local)))

    @property
    def has_train_on_batch(self) -> bool:
        return isinstance(self.model, TrainableModel)

    # -- helpers for TF code ---------------------------------------------------

    def weights_constant(self) -> ModelWeights:
        """The initial weights as TF constants (inside TF code)."""
        return ModelWeights(
            collections.OrderedDict((n, tf.constant(v)) for n, v in self.initial_weights.trainable.items()),
            collections.OrderedDict((n, tf.constant(v)) for n, v in self.initial_weights.non_trainable.items()),
        )

    def local_constant(self) -> "collections.OrderedDict":
        return collections.OrderedDict((n, tf.constant(v)) for n, v in self.initial_local.items())

    def weights_dict(self, trainable_values, non_trainable_values) -> ModelWeights:
        return ModelWeights(
            collections.OrderedDict(zip(self._trainable_names, trainable_values)),
            collections.OrderedDict(zip(self._non_trainable_names, non_trainable_values)),
        )

    def local_dict(self, values) -> "collections.OrderedDict":
        return collections.OrderedDict(zip(self._local_names, values))

    # -- the functions ---------------------------------------------------------

    def forward(self, weights, local, batch, training: bool) -> Tuple[BatchOutput, ModelWeights, Any]:
        raise NotImplementedError

    def gradients(self, weights, local, batch) -> Tuple[BatchOutput, Any, ModelWeights, Any]:
        """A training forward pass and the gradient of its loss for each trainable weight."""
        raise NotImplementedError

    def train_on_batch(self, weights, local, batch) -> Tuple[BatchOutput, ModelWeights, Any]:
        raise TypeError(f"{type(self.model).__name__} is not a TrainableModel; it has no train_on_batch")

    def report(self, local) -> Any:
        raise NotImplementedError

    def why_not_masked(self) -> Optional[str]:
        """Why ``masked_evaluation`` is not available for this model (None when it is)."""
        return "only Keras models built from Keras's own layers, loss and metrics have it"

    def masked_evaluation(self, weights, local, batch, mask) -> Any:
        """The local variables after an inference pass over the rows of ``batch`` where ``mask`` is True.

        Equal, within float rounding, to ``forward(weights, local, b, False)``'s
        on the batch ``b`` of those rows, when the other rows repeat some of
        them (``fedcore.compiler.with_masked_form``).
        """
        raise NotImplementedError

    @property
    def federated_output_computation(self):
        return self.model.federated_output_computation


def _num_examples(output: Any, batch: Any) -> tf.Tensor:
    n = getattr(output, "num_examples", None)
    if n is None:
        n = batch_size(batch)
    if n is None:
        raise ValueError("forward_pass returned no num_examples and the batch has no tensor with a batch axis")
    return tf.cast(n, tf.float32)


def as_batch_output(output: Any, batch: Any, where: str) -> BatchOutput:
    if isinstance(output, BatchOutput):
        loss, predictions = output.loss, output.predictions
    elif isinstance(output, dict) and "loss" in output:
        loss, predictions = output["loss"], output.get("predictions")
    else:
        raise TypeError(f"{where} must return a fedcore.learning.BatchOutput, got {output!r}")
    return BatchOutput(loss=loss, predictions=predictions, num_examples=_num_examples(output, batch))


class VariableFunctions(ModelFunctions):
    """Any Model: assign the values to its variables, run its code, read them back.

    The model's methods are user code: AutoGraph converts them, as it would in a ``tf.function``.
    """

    stateful = True

    def __init__(self, model: Model):
        self._trainable = list(model.trainable_variables)
        self._non_trainable = list(model.non_trainable_variables)
        self._local = list(model.local_variables)
        all_names = unique_names([variable_name(v) for v in self._trainable + self._non_trainable])
        t = len(self._trainable)
        super().__init__(
            model,
            all_names[:t],
            all_names[t:],
            unique_names([variable_name(v) for v in self._local]),
        )

    def _assign(self, weights, local) -> None:
        pairs = [
            (self._trainable, field(weights, "trainable")),
            (self._non_trainable, field(weights, "non_trainable")),
            (self._local, local),
        ]
        for variables, values in pairs:
            for v, value in zip(variables, _nest.flatten(values)):
                v.assign(tf.cast(value, v.dtype))

    def _read(self) -> Tuple[ModelWeights, Any]:
        weights = self.weights_dict([read(v) for v in self._trainable], [read(v) for v in self._non_trainable])
        return weights, self.local_dict([read(v) for v in self._local])

    def forward(self, weights, local, batch, training):
        self._assign(weights, local)
        output = as_batch_output(call_user_code(self.model.forward_pass, batch, training=training), batch, "forward_pass")
        weights, local = self._read()
        return output, weights, local

    def gradients(self, weights, local, batch):
        self._assign(weights, local)
        with tf.GradientTape() as tape:
            output = as_batch_output(call_user_code(self.model.forward_pass, batch, training=True), batch, "forward_pass")
        grads = tape.gradient(output.loss, self._trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        weights, local = self._read()
        return output, collections.OrderedDict(zip(self._trainable_names, grads)), weights, local

    def train_on_batch(self, weights, local, batch):
        if not self.has_train_on_batch:
            return super().train_on_batch(weights, local, batch)
        self._assign(weights, local)
        output = as_batch_output(call_user_code(self.model.train_on_batch, batch), batch, "train_on_batch")
        weights, local = self._read()
        return output, weights, local

    def report(self, local):
        self._assign_local(local)
        return call_user_code(self.model.report_local_outputs)

    def _assign_local(self, local) -> None:
        for v, value in zip(self._local, _nest.flatten(local)):
            v.assign(tf.cast(value, v.dtype))


def functions_for(model: Model) -> ModelFunctions:
    """The ModelFunctions of a model: its own (Keras models), or assign-run-read."""
    own: Optional[Callable[[], ModelFunctions]] = getattr(model, "_fedcore_functions", None)
    if own is not None:
        return own()
    return VariableFunctions(model)

"""Keras 3 models as fedcore.learning Models.

``from_keras_model`` wraps a Keras model with a loss and metrics.  The
wrapper is a full ``Model`` (its methods use the Keras variables, for
interactive use), and it also gives the algorithms pure functions of the
weights built on Keras 3's ``stateless_call`` and the metrics'
``stateless_update_state``: inside fedcore's TensorFlow computations no
variable is read or written, so client work can be vectorized.

Weights are named after their layers and variables, ``dense/kernel``.  Keras
numbers the automatic names of layers across the whole process (the second
model built gets ``dense_1``); the names here are renumbered within the one
model, so that a model's type is the same however many models were built
before it.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from fedcore.compiler.computation import federated_computation, tf_computation
from fedcore.compiler.federated_api import federated_map, federated_sum
from fedcore.compiler.tf_function import call_user_code
from fedcore.learning import _nest
from fedcore.learning import optimizers as optimizers_lib
from fedcore.learning.model import BatchOutput, Model, TrainableModel, batch_size
from fedcore.learning.model_functions import (
    ModelFunctions,
    clean_name,
    field,
    unique_names,
)
from fedcore.types import StructType, TensorType, to_type, type_at_clients

__all__ = ["from_keras_model", "from_compiled_keras_model", "KerasModel"]

_SUFFIX = re.compile(r"(.+?)(?:_(\d+))?")
_RESERVED = ("loss", "num_examples")


def _keras():
    import keras

    return keras


def _snake_case(name: str) -> str:
    return _keras().src.utils.naming.to_snake_case(name)


def _all_layers(layer: Any) -> List[Any]:
    out = []
    for sub in getattr(layer, "layers", None) or []:
        out.append(sub)
        out.extend(_all_layers(sub))
    return out


def keras_weight_names(model: Any) -> Dict[int, str]:
    """Names for a Keras model's weights, by ``id`` of the variable: ``dense/kernel``.

    The model's own name is dropped from the front of each path, and layer
    names that look automatic (a layer class' snake-case name, with or
    without a ``_N`` suffix) are renumbered in the order the model lists its
    weights.
    """
    automatic = {_snake_case(type(layer).__name__) for layer in _all_layers(model)} | {"seed_generator"}
    tables: Dict[tuple, Dict[str, str]] = {}
    canonical = []
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    for v in variables:
        parts = (getattr(v, "path", None) or v.name).split("/")
        if len(parts) > 1 and parts[0] == model.name:
            parts = parts[1:]
        out: List[str] = []
        for part in parts[:-1]:
            match = _SUFFIX.fullmatch(part)
            base = match.group(1) if match else part
            if base in automatic:
                table = tables.setdefault((tuple(out), base), {})
                if part not in table:
                    table[part] = base if not table else f"{base}_{len(table)}"
                part = table[part]
            out.append(part)
        out.append(parts[-1])
        canonical.append("/".join(out))
    names = unique_names(canonical)
    return {id(v): clean_name(n) for v, n in zip(variables, names)}


# --------------------------------------------------------------------------
# Losses and metrics.


def _resolve_loss(loss: Any) -> Any:
    if isinstance(loss, str):
        return _keras().losses.get(loss)
    if not callable(loss):
        raise TypeError(f"loss must be a Keras loss, a loss name or a function loss(y_true, y_pred), got {loss!r}")
    return loss


def _accuracy_for(label_spec: Any, output_shape: Any) -> Any:
    metrics = _keras().metrics
    out_dim = output_shape[-1] if output_shape else None
    label_rank = len(label_spec.shape) if getattr(label_spec, "shape", None) is not None else None
    if out_dim == 1:
        return metrics.BinaryAccuracy(name="accuracy")
    if label_rank is not None and output_shape is not None and label_rank == len(output_shape) and (
        label_spec.shape[-1] == out_dim and out_dim not in (None, 1)
    ):
        return metrics.CategoricalAccuracy(name="accuracy")
    return metrics.SparseCategoricalAccuracy(name="accuracy")


def _resolve_metrics(metrics: Optional[Sequence[Any]], label_spec: Any, output_shape: Any) -> List[Any]:
    keras = _keras()
    if metrics is None:
        return []
    if isinstance(metrics, (str, keras.metrics.Metric)) or not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    out = []
    for m in metrics:
        if isinstance(m, str) and m in ("accuracy", "acc"):
            m = _accuracy_for(label_spec, output_shape)
        elif isinstance(m, str):
            resolved = keras.metrics.get(m)
            m = resolved if isinstance(resolved, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(resolved, name=m)
        elif not isinstance(m, keras.metrics.Metric):
            if callable(m):
                m = keras.metrics.MeanMetricWrapper(m, name=getattr(m, "__name__", "metric"))
            else:
                raise TypeError(f"metrics must be Keras metrics, metric names or functions, got {m!r}")
        out.append(m)
    names = [m.name for m in out]
    for n in names:
        if n in _RESERVED:
            raise ValueError(f"a metric may not be named {n!r}: fedcore.learning reports the loss and num_examples itself")
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique, got {names}")
    return out


def _batch_loss(loss_fn: Any, y: Any, predictions: Any) -> tf.Tensor:
    loss = tf.convert_to_tensor(call_user_code(loss_fn, y, predictions))  # a user's loss function may branch on tensors
    if loss.shape.rank != 0:
        loss = tf.reduce_mean(loss)
    return tf.cast(loss, tf.float32)


# --------------------------------------------------------------------------
# The wrapper.


class KerasModel(Model):
    """A Keras 3 model, its loss and metrics, as a ``fedcore.learning.Model``.

    Build it with ``from_keras_model`` or ``from_compiled_keras_model``.
    """

    def __init__(self, keras_model: Any, loss: Any, input_spec: Any, metrics: Any = None, optimizer: Any = None):
        keras = _keras()
        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"expected a Keras 3 model (keras.Model), got {keras_model!r}")
        self._keras_model = keras_model
        self._loss_fn = _resolve_loss(loss)
        self._input_spec = input_spec
        try:
            spec_type = to_type(input_spec)
        except (TypeError, ValueError) as e:
            raise TypeError(f"input_spec must be a structure of tf.TensorSpec, got {input_spec!r}: {e}") from None
        if not isinstance(spec_type, StructType) or len(spec_type) != 2:
            raise TypeError(
                f"input_spec must have two parts, the inputs and the labels, as OrderedDict(x=..., y=...) or "
                f"(x, y); got {spec_type}"
            )
        names = spec_type.names()
        if all(n is not None for n in names) and set(names) >= {"x", "y"}:
            self._keys: Sequence[Any] = ("x", "y")
        elif all(n is None for n in names):
            self._keys = (0, 1)
        else:
            raise TypeError(f"input_spec must name its parts x and y, or leave both unnamed; got {spec_type}")
        x_spec, y_spec = self._part(input_spec, 0), self._part(input_spec, 1)
        if not keras_model.built:
            keras_model.build(tf.nest.map_structure(lambda s: s.shape, x_spec))
        try:
            output_shape = tuple(keras_model.compute_output_spec(
                tf.nest.map_structure(lambda s: keras.KerasTensor(s.shape, s.dtype), x_spec)
            ).shape)
        except Exception:  # noqa: BLE001 - only used to pick an accuracy metric
            output_shape = None
        self._metrics = _resolve_metrics(metrics, y_spec, output_shape)
        self._optimizer = optimizer
        self._loss_sum = tf.Variable(0.0, trainable=False, name="loss_sum")
        self._num_examples = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="num_examples")
        self._names = keras_weight_names(keras_model)
        self._output_computation = None

    # -- the Model interface -------------------------------------------------

    @property
    def keras_model(self) -> Any:
        return self._keras_model

    @property
    def trainable_variables(self):
        return list(self._keras_model.trainable_variables)

    @property
    def non_trainable_variables(self):
        return list(self._keras_model.non_trainable_variables)

    @property
    def local_variables(self):
        return [self._loss_sum, self._num_examples] + [v for m in self._metrics for v in m.variables]

    @property
    def metrics(self) -> List[Any]:
        return list(self._metrics)

    @property
    def input_spec(self):
        return self._input_spec

    def _part(self, batch: Any, i: int) -> Any:
        key = self._keys[i]
        if isinstance(key, int):
            return batch[key]
        return field(batch, key)

    def forward_pass(self, batch_input, training=True):
        x, y = self._part(batch_input, 0), self._part(batch_input, 1)
        predictions = self._keras_model(x, training=training)
        loss = _batch_loss(self._loss_fn, y, predictions)
        if self._keras_model.losses:
            loss += tf.add_n([tf.cast(l, tf.float32) for l in self._keras_model.losses])
        n = batch_size(batch_input)
        self._loss_sum.assign_add(loss * tf.cast(n, tf.float32))
        self._num_examples.assign_add(tf.cast(n, tf.int64))
        for m in self._metrics:
            m.update_state(y, predictions)
        return BatchOutput(loss=loss, predictions=predictions, num_examples=n)

    def report_local_outputs(self):
        values = [tf.convert_to_tensor(v) for v in self.local_variables]
        return _local_outputs(self._metrics, values)

    @property
    def federated_output_computation(self):
        if self._output_computation is None:
            self._output_computation = _build_output_computation(self._metrics)
        return self._output_computation

    def __repr__(self) -> str:
        return f"<fedcore.learning.KerasModel of {self._keras_model.name!r}: input {to_type(self._input_spec)}>"

    # -- the pure view -------------------------------------------------------

    def _fedcore_functions(self) -> "KerasFunctions":
        return KerasFunctions(self)


class TrainableKerasModel(KerasModel, TrainableModel):
    """A compiled Keras model: ``train_on_batch`` steps its compiled optimizer."""

    def train_on_batch(self, batch_input):
        with tf.GradientTape() as tape:
            output = self.forward_pass(batch_input, training=True)
        variables = self.trainable_variables
        grads = tape.gradient(output.loss, variables)
        self._keras_model.optimizer.apply_gradients(zip(grads, variables))
        return output

    def _fedcore_functions(self) -> "KerasFunctions":
        functions = KerasFunctions(self)
        functions.has_compiled_optimizer = True
        return functions


def _local_outputs(metrics: List[Any], values: List[Any]) -> "collections.OrderedDict":
    """Local outputs from local variable values [loss_sum, num_examples, *metric variables]."""
    loss_sum, num_examples, rest = values[0], values[1], list(values[2:])
    out = collections.OrderedDict()
    for m in metrics:
        k = len(m.variables)
        out[m.name] = tuple(rest[:k])
        rest = rest[k:]
    out["loss"] = (loss_sum, tf.cast(num_examples, tf.float32))
    out["num_examples"] = num_examples
    return out


def _local_outputs_type(metrics: List[Any]) -> StructType:
    elements = []
    for m in metrics:
        elements.append((m.name, StructType([TensorType(tf.as_dtype(v.dtype), tuple(v.shape)) for v in m.variables], container=tuple)))
    elements.append(("loss", StructType([TensorType("float32"), TensorType("float32")], container=tuple)))
    elements.append(("num_examples", TensorType("int64")))
    return StructType(elements, container=collections.OrderedDict)


def _build_output_computation(metrics: List[Any]):
    """Sums the metric variables over clients, then finishes the metrics on the server."""
    outputs_type = _local_outputs_type(metrics)

    @tf_computation(outputs_type)
    def finish_metrics(sums):
        result = collections.OrderedDict()
        for m in metrics:
            result[m.name] = tf.cast(m.stateless_result([tf.convert_to_tensor(v) for v in field(sums, m.name)]), tf.float32)
        loss_sum, count = field(sums, "loss")
        result["loss"] = tf.math.divide_no_nan(loss_sum, count)
        result["num_examples"] = field(sums, "num_examples")
        return result

    @federated_computation(type_at_clients(outputs_type))
    def aggregate_keras_metrics(local_outputs):
        return federated_map(finish_metrics, federated_sum(local_outputs))

    return aggregate_keras_metrics


class KerasFunctions(ModelFunctions):
    """Pure functions of the weights, by Keras 3's stateless_call."""

    stateful = False
    has_compiled_optimizer = False

    def __init__(self, model: KerasModel):
        # Clients start every round from fresh metrics, whatever the metric objects saw before.
        for m in model.metrics:
            m.reset_state()
        model._loss_sum.assign(0.0)
        model._num_examples.assign(0)
        names = model._names
        local_names = ["loss_sum", "num_examples"] + [
            clean_name(f"{m.name}/{v.name}") for m in model.metrics for v in m.variables
        ]
        super().__init__(
            model,
            [names[id(v)] for v in model.trainable_variables],
            [names[id(v)] for v in model.non_trainable_variables],
            unique_names(local_names),
        )
        keras_optimizer = getattr(model._keras_model, "optimizer", None) if isinstance(model, TrainableModel) else None
        self.default_optimizer = None
        self.default_optimizer_error = None
        if keras_optimizer is not None:
            try:
                self.default_optimizer = optimizers_lib.from_keras(keras_optimizer)
            except (TypeError, ValueError) as e:
                self.default_optimizer_error = str(e)

    @property
    def has_train_on_batch(self) -> bool:
        # Compiled models train with the functional equivalent of their optimizer instead.
        return False

    def _run(self, weights, local, batch, training: bool):
        model: KerasModel = self.model
        keras_model = model._keras_model
        x, y = model._part(batch, 0), model._part(batch, 1)
        trainable = _nest.flatten(field(weights, "trainable"))
        non_trainable = _nest.flatten(field(weights, "non_trainable"))
        predictions, non_trainable, losses = keras_model.stateless_call(
            trainable, non_trainable, x, training=training, return_losses=True
        )
        return trainable, non_trainable, predictions, losses, x, y

    def _finish(self, local, batch, y, predictions, loss, trainable, non_trainable):
        model: KerasModel = self.model
        n = batch_size(batch)
        values = _nest.flatten(local)
        loss_sum = values[0] + loss * tf.cast(n, tf.float32)
        count = values[1] + tf.cast(n, tf.int64)
        rest = list(values[2:])
        updated = []
        for m in model.metrics:
            k = len(m.variables)
            updated.extend(m.stateless_update_state([tf.convert_to_tensor(v) for v in rest[:k]], y, predictions))
            rest = rest[k:]
        output = BatchOutput(loss=loss, predictions=predictions, num_examples=tf.cast(n, tf.float32))
        return output, self.weights_dict(trainable, non_trainable), self.local_dict([loss_sum, count] + updated)

    def _loss(self, y, predictions, losses):
        loss = _batch_loss(self.model._loss_fn, y, predictions)
        if losses:
            loss += tf.add_n([tf.cast(l, tf.float32) for l in losses])
        return loss

    def forward(self, weights, local, batch, training):
        trainable, non_trainable, predictions, losses, _, y = self._run(weights, local, batch, training)
        loss = self._loss(y, predictions, losses)
        return self._finish(local, batch, y, predictions, loss, trainable, non_trainable)

    def gradients(self, weights, local, batch):
        trainable = [tf.convert_to_tensor(t) for t in _nest.flatten(field(weights, "trainable"))]
        weights = self.weights_dict(trainable, _nest.flatten(field(weights, "non_trainable")))
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            _, non_trainable, predictions, losses, _, y = self._run(weights, local, batch, True)
            loss = self._loss(y, predictions, losses)
        grads = tape.gradient(loss, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        output, weights, local = self._finish(local, batch, y, predictions, loss, trainable, non_trainable)
        return output, collections.OrderedDict(zip(self._trainable_names, grads)), weights, local

    def report(self, local):
        return _local_outputs(self.model.metrics, [tf.convert_to_tensor(v) for v in _nest.flatten(local)])

    def why_not_masked(self) -> Optional[str]:
        return _why_not_row_wise(self.model)

    def masked_evaluation(self, weights, local, batch, mask):
        _, _, predictions, losses, _, y = self._run(weights, local, batch, training=False)
        if any(_keras().src.backend.get_keras_mask(p) is not None for p in _nest.flatten(predictions)):
            # _why_not_row_wise rules out the layers that make masks; a mask here is a bug to report.
            raise ValueError("fedcore: the masked evaluation met a Keras mask on the predictions it did not expect")
        weight = tf.cast(mask, tf.float32)
        per = tf.cast(_per_example_loss(self.model._loss_fn, y, predictions), tf.float32)
        # The loss of a batch is the mean of ``per`` over all its values: summed over the real rows, it is
        # their values' sum over the values per row.
        kept = tf.where(tf.reshape(mask, [-1] + [1] * (per.shape.rank - 1)), per, tf.zeros_like(per))
        per_row = tf.cast(tf.reduce_prod(tf.shape(per)[1:]), tf.float32)
        loss_sum = tf.reduce_sum(kept) / per_row
        if losses:  # the weights' regularization (no layer adds a loss that depends on the batch)
            loss_sum += tf.add_n([tf.cast(l, tf.float32) for l in losses]) * tf.reduce_sum(weight)
        values = _nest.flatten(local)
        rest = [tf.convert_to_tensor(v) for v in values[2:]]
        updated = []
        for m in self.model.metrics:
            k = len(m.variables)
            updated.extend(m.stateless_update_state(rest[:k], y, predictions, sample_weight=weight))
            rest = rest[k:]
        count = tf.reduce_sum(tf.cast(mask, tf.int64))
        return self.local_dict([values[0] + loss_sum, values[1] + count] + updated)


def _keras_own(obj: Any) -> bool:
    """Whether ``obj``'s class is one of Keras's own (not a user's subclass)."""
    return type(obj).__module__.startswith("keras.src.")


def _why_not_row_wise(model: KerasModel) -> Optional[str]:
    """Why the model's inference pass may not run on padded batches with a mask (None when it may).

    It may when every row's predictions depend on that row only and the loss
    and metrics weigh rows by a mask exactly: Keras's own layers in
    inference (save those that take arbitrary code, carry state from batch to
    batch, add losses that depend on the batch or make masks), Keras's own
    loss functions reduced by their mean, and Keras's own metrics that
    weigh each row by its sample weight.
    """
    keras = _keras()
    for layer in model._keras_model._flatten_layers(include_self=True, recursive=True):
        name = type(layer).__name__
        if not _keras_own(layer) or isinstance(layer, (keras.layers.Lambda, keras.layers.Masking)) \
                or type(layer).__module__.startswith(("keras.src.export", "keras.src.utils")):
            return f"the layer {layer.name} ({name}) is not one of Keras's own row-wise layers"
        if getattr(layer, "activity_regularizer", None) is not None:
            return f"the layer {layer.name} has an activity regularizer, whose loss depends on the batch"
        if getattr(layer, "stateful", False) or getattr(layer, "mask_zero", False):
            return f"the layer {layer.name} is stateful or makes a mask"
    loss = model._loss_fn
    if isinstance(loss, keras.src.losses.losses.LossFunctionWrapper):
        if not (_keras_own(loss) and loss.reduction == "sum_over_batch_size" and _keras_function(loss.fn)):
            return f"the loss {loss!r} is not one of Keras's own, reduced by its mean"
    elif not _keras_function(loss):
        return f"the loss {loss!r} is not one of Keras's own"
    for m in model.metrics:
        wrapped = isinstance(m, keras.metrics.MeanMetricWrapper) and _keras_function(getattr(m, "_fn", None))
        own = type(m) is keras.metrics.RootMeanSquaredError or type(m).__module__ == "keras.src.metrics.confusion_metrics"
        if not _keras_own(m) or not (wrapped or own):
            return f"the metric {m.name} is not one of Keras's own that weigh rows by a sample weight"
    return None


def _keras_function(fn: Any) -> bool:
    return callable(fn) and getattr(fn, "__module__", "").startswith(("keras.src.losses", "keras.src.metrics"))


def _per_example_loss(loss: Any, y: Any, predictions: Any) -> tf.Tensor:
    """The loss's values before its reduction (``_why_not_row_wise`` says which losses get here)."""
    keras = _keras()
    if isinstance(loss, keras.src.losses.losses.LossFunctionWrapper):
        # As Loss.__call__ passes them to ``call``.
        convert = lambda x: keras.ops.convert_to_tensor(x, dtype=loss.dtype)  # noqa: E731
        return loss.call(keras.tree.map_structure(convert, y), keras.tree.map_structure(convert, predictions))
    return loss(y, predictions)


# --------------------------------------------------------------------------
# Constructors.


def from_keras_model(keras_model: Any, loss: Any, input_spec: Any, metrics: Optional[Sequence[Any]] = None) -> KerasModel:
    """Wraps a Keras 3 model as a ``fedcore.learning.Model``.

    ``loss`` is a Keras loss, a loss name, or a function ``loss(y_true,
    y_pred)``; ``input_spec`` the structure of a batch, as
    ``OrderedDict(x=tf.TensorSpec(...), y=tf.TensorSpec(...))`` or a pair
    ``(x_spec, y_spec)``; ``metrics`` Keras metrics, metric names or functions.
    The local outputs and the aggregated metrics are the metrics by name,
    then ``loss`` (the mean over examples) and ``num_examples``.
    """
    return KerasModel(keras_model, loss, input_spec, metrics)


def _spec_of(value: Any) -> tf.TensorSpec:
    t = tf.convert_to_tensor(value)
    shape = [None] + list(t.shape[1:]) if t.shape.rank else []
    return tf.TensorSpec(shape, t.dtype)


def from_compiled_keras_model(compiled_model: Any, sample_batch: Any) -> KerasModel:
    """Wraps a compiled Keras 3 model, taking its loss, metrics and optimizer.

    ``sample_batch`` is one batch (numpy arrays or tensors), as
    ``OrderedDict(x=..., y=...)`` or ``(x, y)``; its first axis becomes ``?`` in
    the input spec.  The federated averaging process trains clients with the
    compiled optimizer (Keras SGD, Adam or Adagrad).
    """
    keras = _keras()
    if not isinstance(compiled_model, keras.Model):
        raise TypeError(f"expected a compiled Keras 3 model, got {compiled_model!r}")
    if not getattr(compiled_model, "compiled", False) or getattr(compiled_model, "optimizer", None) is None:
        raise ValueError(f"Keras model {compiled_model.name!r} is not compiled; call compile(...) or use from_keras_model")
    loss = compiled_model.loss
    if loss is None:
        raise ValueError(f"Keras model {compiled_model.name!r} was compiled without a loss")
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError("models compiled with several losses are not supported; use from_keras_model with one loss")
    metrics = getattr(getattr(compiled_model, "_compile_metrics", None), "_user_metrics", None)
    if isinstance(sample_batch, dict):
        input_spec = collections.OrderedDict((k, tf.nest.map_structure(_spec_of, v)) for k, v in sample_batch.items())
    else:
        input_spec = tf.nest.map_structure(_spec_of, sample_batch)
        if isinstance(input_spec, list):
            input_spec = tuple(input_spec)
    return TrainableKerasModel(compiled_model, loss, input_spec, metrics, optimizer=compiled_model.optimizer)

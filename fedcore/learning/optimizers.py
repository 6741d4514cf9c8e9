"""Optimizers as pure functions: state in, state out.

A federated algorithm keeps its optimizer's state in its own federated state
(for the server's optimizer) or in a client's loop (for the client's), so an
optimizer here owns no variables.  It has two methods, both called inside
TensorFlow code:

* ``initialize(weights)`` returns the state for weights shaped like
  ``weights`` (a structure of tensors);
* ``apply(state, weights, gradients)`` returns ``(state, weights)`` after one
  step.

The state is a tuple whose first element is the int64 step count, followed by
one structure shaped like the weights per slot (momentum, moments, ...).  So
plain SGD's state has the type ``<int64>`` and Adam's
``<int64,<...weights...>,<...weights...>>``.

``from_keras`` turns a Keras optimizer (SGD, Adam, Adagrad) into the
equivalent here, which is how Keras optimizers given to the learning
algorithms are used.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import tensorflow as tf

from fedcore.learning import _nest

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "Yogi", "from_keras", "build", "build_adam", "build_sgdm"]


def _map(fn: Callable, *structures: Any) -> Any:
    return _nest.map_structure(fn, *structures)


def _check_rate(name: str, value: float, low: float = 0.0, inclusive: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if value < low or (not inclusive and value == low):
        bound = f">= {low}" if inclusive else f"> {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class Optimizer:
    """Base class: subclasses define ``_slots`` and ``_step``."""

    #: Names of the per-weight slots, in the order they follow the step count in the state.
    slot_names: Tuple[str, ...] = ()

    def initialize(self, weights: Any) -> tuple:
        count = tf.constant(0, tf.int64)
        return (count,) + tuple(self._initial_slot(name, weights) for name in self.slot_names)

    def _initial_slot(self, name: str, weights: Any) -> Any:
        return _map(lambda w: tf.zeros_like(w), weights)

    def apply(self, state: Any, weights: Any, gradients: Any) -> Tuple[tuple, Any]:
        state = tuple(state)
        if len(state) != 1 + len(self.slot_names):
            raise ValueError(
                f"{self!r} expects a state of {1 + len(self.slot_names)} elements "
                f"(step count, {', '.join(self.slot_names) or 'no slots'}), got {len(state)}"
            )
        count = state[0] + 1
        flat_weights = _nest.flatten(weights)
        flat_grads = _nest.flatten(gradients)
        if len(flat_grads) != len(flat_weights):
            raise ValueError(f"{len(flat_grads)} gradients for {len(flat_weights)} weights")
        flat_slots = [_nest.flatten(s) for s in state[1:]]
        if any(len(s) != len(flat_weights) for s in flat_slots):
            raise ValueError(f"optimizer slots do not match the {len(flat_weights)} weights")
        step = tf.cast(count, tf.float32)
        new_weights, new_slots = [], [[] for _ in flat_slots]
        for i, (w, g) in enumerate(zip(flat_weights, flat_grads)):
            g = tf.cast(g, w.dtype)
            w_new, s_new = self._step(w, g, [s[i] for s in flat_slots], tf.cast(step, w.dtype))
            new_weights.append(w_new)
            for k, s in enumerate(s_new):
                new_slots[k].append(s)
        weights = _nest.pack_as(weights, new_weights)
        return (count,) + tuple(_nest.pack_as(weights, s) for s in new_slots), weights

    def _step(self, w, g, slots, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({fields})"

    def _config(self) -> dict:
        return {}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._config().items())))


class SGD(Optimizer):
    """Gradient descent, with optional (Nesterov) momentum as in Keras' SGD.

    With momentum ``m``: ``v = m * v - lr * g``, then ``w += v`` (or
    ``w += m * v - lr * g`` with ``nesterov=True``).  Without momentum the
    state holds only the step count.
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        self.learning_rate = _check_rate("learning_rate", learning_rate)
        self.momentum = _check_rate("momentum", momentum)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def _config(self) -> dict:
        return dict(learning_rate=self.learning_rate, momentum=self.momentum, nesterov=self.nesterov)

    def _step(self, w, g, slots, step):
        lr = tf.constant(self.learning_rate, w.dtype)
        if not slots:
            return w - lr * g, []
        m = tf.constant(self.momentum, w.dtype)
        v = m * slots[0] - lr * g
        if self.nesterov:
            return w + m * v - lr * g, [v]
        return w + v, [v]


class Adagrad(Optimizer):
    """Adagrad as in Keras: ``a += g^2``, ``w -= lr * g / (sqrt(a) + epsilon)``."""

    slot_names = ("accumulator",)

    def __init__(self, learning_rate: float = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7):
        self.learning_rate = _check_rate("learning_rate", learning_rate)
        self.initial_accumulator_value = _check_rate("initial_accumulator_value", initial_accumulator_value)
        self.epsilon = _check_rate("epsilon", epsilon)

    def _config(self) -> dict:
        return dict(
            learning_rate=self.learning_rate,
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
        )

    def _initial_slot(self, name, weights):
        return _map(lambda w: tf.fill(tf.shape(w), tf.cast(self.initial_accumulator_value, w.dtype)), weights)

    def _step(self, w, g, slots, step):
        a = slots[0] + tf.square(g)
        return w - self.learning_rate * g / (tf.sqrt(a) + self.epsilon), [a]


class Adam(Optimizer):
    """Adam, in Keras' formulation: bias correction folded into the step size,
    and ``epsilon`` added to the square root of the uncorrected second moment."""

    slot_names = ("m", "v")

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
        self.learning_rate = _check_rate("learning_rate", learning_rate)
        self.beta_1 = _check_rate("beta_1", beta_1)
        self.beta_2 = _check_rate("beta_2", beta_2)
        if self.beta_1 >= 1.0 or self.beta_2 >= 1.0:
            raise ValueError(f"beta_1 and beta_2 must be in [0, 1), got {self.beta_1} and {self.beta_2}")
        self.epsilon = _check_rate("epsilon", epsilon)

    def _config(self) -> dict:
        return dict(learning_rate=self.learning_rate, beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)

    def _moments(self, g, m, v):
        return m + (g - m) * (1.0 - self.beta_1), v + (tf.square(g) - v) * (1.0 - self.beta_2)

    def _step(self, w, g, slots, step):
        m, v = self._moments(g, slots[0], slots[1])
        b1, b2 = tf.cast(self.beta_1, w.dtype), tf.cast(self.beta_2, w.dtype)
        alpha = self.learning_rate * tf.sqrt(1.0 - tf.pow(b2, step)) / (1.0 - tf.pow(b1, step))
        return w - alpha * m / (tf.sqrt(v) + self.epsilon), [m, v]


class Yogi(Adam):
    """Yogi (Zaheer et al., 2018), the server optimizer of FedYogi in
    "Adaptive Federated Optimization" (Reddi et al., 2021).

    Like Adam, except that the second moment moves additively towards
    ``g^2``: ``v -= (1 - beta_2) * sign(v - g^2) * g^2``, which keeps it from
    growing too fast.  The second moment starts at ``initial_accumulator_value``.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
    ):
        super().__init__(learning_rate, beta_1, beta_2, epsilon)
        self.initial_accumulator_value = _check_rate("initial_accumulator_value", initial_accumulator_value)

    def _config(self) -> dict:
        return dict(super()._config(), initial_accumulator_value=self.initial_accumulator_value)

    def _initial_slot(self, name, weights):
        if name == "v":
            return _map(lambda w: tf.fill(tf.shape(w), tf.cast(self.initial_accumulator_value, w.dtype)), weights)
        return super()._initial_slot(name, weights)

    def _moments(self, g, m, v):
        g2 = tf.square(g)
        return m + (g - m) * (1.0 - self.beta_1), v - (1.0 - self.beta_2) * tf.sign(v - g2) * g2


# --------------------------------------------------------------------------
# Keras optimizers.


def _keras_config(optimizer: Any) -> dict:
    config = optimizer.get_config()
    unsupported = [
        key
        for key in ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "loss_scale_factor", "gradient_accumulation_steps")
        if config.get(key) not in (None, 0, 0.0)
    ]
    if config.get("use_ema"):
        unsupported.append("use_ema")
    if config.get("amsgrad"):
        unsupported.append("amsgrad")
    if unsupported:
        raise ValueError(
            f"Keras optimizer {type(optimizer).__name__} uses {', '.join(unsupported)}, which fedcore.learning's "
            "optimizers do not support; use one of fedcore.learning.optimizers directly"
        )
    rate = config.get("learning_rate")
    if not isinstance(rate, (int, float)):
        raise ValueError(
            f"Keras optimizer {type(optimizer).__name__} has a learning-rate schedule ({rate!r}); "
            "only constant learning rates are supported"
        )
    return config


def from_keras(optimizer: Any) -> Optimizer:
    """The optimizer here that computes the same steps as a Keras optimizer.

    Supports Keras' SGD (with momentum and Nesterov), Adam and Adagrad with a
    constant learning rate.  Raises TypeError for other optimizers and
    ValueError for options with no equivalent (clipping, weight decay, ...).
    """
    try:
        import keras
    except ImportError:  # pragma: no cover
        keras = None
    if keras is None or not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"expected a Keras optimizer, got {optimizer!r}")
    kind = type(optimizer).__name__
    if kind not in ("SGD", "Adam", "Adagrad"):
        raise TypeError(
            f"Keras optimizer {kind} has no functional equivalent in fedcore.learning.optimizers; "
            "use SGD, Adam or Adagrad, or one of fedcore.learning.optimizers (SGD, Adagrad, Adam, Yogi)"
        )
    config = _keras_config(optimizer)
    # Keras keeps the rate in a float32 variable: 0.02 reads back as 0.0199999995...
    lr = float(tf.constant(config["learning_rate"], tf.float32).numpy())
    if kind == "SGD":
        return SGD(lr, momentum=config.get("momentum", 0.0), nesterov=config.get("nesterov", False))
    if kind == "Adam":
        return Adam(lr, beta_1=config["beta_1"], beta_2=config["beta_2"], epsilon=config["epsilon"])
    return Adagrad(lr, initial_accumulator_value=config["initial_accumulator_value"], epsilon=config["epsilon"])


def build(optimizer_fn: Callable[[], Any], what: str) -> Optimizer:
    """Calls ``optimizer_fn`` and returns an Optimizer, converting a Keras one."""
    if isinstance(optimizer_fn, Optimizer):
        return optimizer_fn
    if not callable(optimizer_fn):
        raise TypeError(f"{what} must be a function returning an optimizer, got {optimizer_fn!r}")
    optimizer = optimizer_fn()
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        return from_keras(optimizer)
    except TypeError:
        raise TypeError(
            f"{what} returned {optimizer!r}; expected a fedcore.learning.optimizers optimizer "
            "(SGD, Adagrad, Adam, Yogi) or a Keras SGD, Adam or Adagrad"
        ) from None


# --------------------------------------------------------------------------
# TFF's names (``tff.learning.optimizers``).


def build_sgdm(learning_rate: float = 0.01, momentum=None) -> SGD:
    """TFF's ``build_sgdm``: gradient descent, with momentum unless ``momentum`` is None.

    TFF accumulates ``a = momentum * a + g`` and steps ``w -= lr * a``;
    :class:`SGD`'s ``v = momentum * v - lr * g``, ``w += v`` is the same step
    (``v = -lr * a``) for a constant learning rate.
    """
    return SGD(learning_rate=learning_rate, momentum=0.0 if momentum is None else momentum)


def build_adam(learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Adam:
    """TFF's ``build_adam``: :class:`Adam` (bias correction folded into the step size)."""
    return Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)

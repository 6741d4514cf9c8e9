"""A training step that takes a max-pool's gradient runs as a function of its own in the sequential loop.

oneDNN's graph rewrite (TensorFlow's x86 builds) gives ``MaxPoolGrad`` its
fast kernel only where it meets the forward pool first; inlined into the loop
over clients, whose graph is cyclic, it sometimes does not, and Eigen's
kernel, several times slower, runs.  Called as its own function (``_noinline``)
the step is rewritten without the loop around it.  The results must not change.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.compiler import tf_function
from fedcore.runtime.tensorflow import TensorFlowExecutor

SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 8, 8, 1], tf.float32), y=tf.TensorSpec([None], tf.int32))


def cnn_fn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                     input_spec=SPEC)


def dense_fn():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                     input_spec=SPEC)


def client_data(sizes):
    rng = np.random.default_rng(3)
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.random((m, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 4, m).astype(np.int32))).batch(4)
        for m in sizes]


def one_round(model_fn, executor, sizes):
    process = learning.build_federated_averaging_process(
        model_fn, client_optimizer_fn=lambda: keras.optimizers.SGD(0.1))
    with fedcore.execution_context(executor):
        state, metrics = process.next(process.initialize(), client_data(sizes))
    return state, metrics


def separate_functions(executor):
    """The functions of the last program's graph that are called, not inlined, and the ops of each."""
    graph_def = list(executor._programs.values())[-1].plain.graph.as_graph_def()
    return {f.signature.name: {n.op for n in f.node_def}
            for f in graph_def.library.function if f.attr["_noinline"].b}


def leaves(state):
    return [np.asarray(x) for x in learning.checkpoint._nest.flatten(state)]


def test_the_pooling_step_is_called_separately_and_a_dense_step_is_inlined():
    executor = TensorFlowExecutor(strategy="sequential")
    one_round(cnn_fn, executor, [8, 12, 4])  # full batches: the step traced at its static size
    separate = separate_functions(executor)
    # Only where oneDNN rewrites the graph: elsewhere inlining is best.  One step, traced once at the static size.
    assert len(separate) == (1 if tf_function._ONEDNN else 0)
    executor = TensorFlowExecutor(strategy="sequential")
    one_round(dense_fn, executor, [8, 12, 4])
    assert separate_functions(executor) == {}


def test_pools_gradients_says_which_computations_take_a_pools_gradient():
    @fedcore.tf_computation(tf.TensorSpec([2, 4, 4, 1], tf.float32))
    def pool_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.nn.max_pool2d(x, 2, 2, "VALID"))
        return tape.gradient(y, x)

    @fedcore.tf_computation(tf.TensorSpec([2, 4, 4, 1], tf.float32))
    def pool_only(x):
        return tf.nn.max_pool2d(x, 2, 2, "VALID")

    assert pool_gradient.ir.function.pools_gradients is tf_function._ONEDNN
    assert pool_only.ir.function.pools_gradients is False


@pytest.mark.parametrize("sizes", [[8, 12, 4], [1, 7, 0, 9]], ids=["full-batches", "ragged-and-empty"])
def test_a_cnn_round_agrees_with_the_reference(sizes):
    expected, expected_metrics = one_round(cnn_fn, fedcore.ReferenceExecutor(), sizes)
    for strategy in ("sequential", "auto"):
        got, metrics = one_round(cnn_fn, TensorFlowExecutor(strategy=strategy), sizes)
        for a, b in zip(leaves(got), leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert metrics["num_examples"] == expected_metrics["num_examples"] == sum(sizes)
        np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)

"""Recurrent and convolutional client models on the TF executor, and the sequential path's client data.

Each strategy must agree with the reference interpreter; ``auto`` must run
every model (falling back to the sequential loop where vectorization cannot
run or does not pay) and say in ``strategy_report`` what it chose and why.
"""

import collections

import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings

import fedcore
from fedcore import learning
from fedcore.runtime.execution import execute
from fedcore.runtime.tensorflow import TensorFlowExecutor

VOCAB, SEQ = 12, 4


def _rnn_model_fn(cell):
    def model_fn():
        layer = {"gru": tf.keras.layers.GRU, "lstm": tf.keras.layers.LSTM}[cell]
        model = tf.keras.Sequential([
            tf.keras.Input((SEQ,), dtype="int64"),
            tf.keras.layers.Embedding(VOCAB, 4),
            layer(5, return_sequences=True),
            tf.keras.layers.Dense(VOCAB),
        ])
        return learning.from_keras_model(
            model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=collections.OrderedDict(x=tf.TensorSpec([None, SEQ], tf.int64), y=tf.TensorSpec([None, SEQ], tf.int64)),
        )

    return model_fn


def _cnn_model_fn():
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        tf.keras.layers.Conv2D(3, 3, padding="same", activation="relu"),
        tf.keras.layers.MaxPool2D(2),
        tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        tf.keras.layers.MaxPool2D(2),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(6, activation="relu"),
        tf.keras.layers.Dense(3),
    ])
    return learning.from_keras_model(
        model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 8, 8, 1], tf.float32), y=tf.TensorSpec([None], tf.int32)),
    )


def _sequences(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [
        tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            x=rng.integers(0, VOCAB, (n, SEQ)), y=rng.integers(0, VOCAB, (n, SEQ)))).batch(3)
        for n in sizes
    ]


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [
        tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            x=rng.random((n, 8, 8, 1), dtype=np.float32), y=rng.integers(0, 3, n).astype(np.int32))).batch(2)
        for n in sizes
    ]


def _train_everywhere(model_fn, data, strategies):
    """One FedAvg round from the same initial state on the reference and on each TF strategy.

    Returns each strategy's report, or the ExecutionError it raised.
    """
    process = learning.build_federated_averaging_process(
        model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(0.5))
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        start = process.initialize()
        expected, expected_metrics = process.next(start, data)
    out = {}
    for strategy in strategies:
        executor = TensorFlowExecutor(strategy=strategy)
        with fedcore.execution_context(executor):
            try:
                state, metrics = process.next(start, data)
            except fedcore.ExecutionError as e:
                out[strategy] = e
                continue
        for name, value in expected.model.trainable.items():
            np.testing.assert_allclose(state.model.trainable[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{strategy}: {name}")
        np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)
        assert metrics["num_examples"] == expected_metrics["num_examples"]
        # The first piece of client work of a FedAvg round is the clients' training.
        out[strategy] = executor.strategy_report[0]
    return out


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_models_train_on_auto_like_the_reference(cell):
    # Ragged clients: 4 and 2 sequences in batches of 3 (partial last batches).
    forced = ["vectorized"] if cell == "gru" else []
    outcome = _train_everywhere(_rnn_model_fn(cell), _sequences([4, 2]), ["auto"] + forced)
    # pfor has no conversion for the gradient of Keras's recurrent loop: auto says so and runs the clients in turn.
    assert outcome["auto"].strategy == "sequential"
    assert outcome["auto"].reason.startswith("tf.vectorized_map cannot convert"), outcome["auto"].reason
    for strategy in forced:  # forced, the same reason is the error
        assert isinstance(outcome[strategy], fedcore.ExecutionError)
        assert "strategy='vectorized' cannot run this client work: tf.vectorized_map cannot convert" in str(outcome[strategy])


def test_cnn_on_auto_runs_its_clients_in_turn_and_matches_the_reference(caplog):
    with caplog.at_level("WARNING", logger="tensorflow"):
        outcome = _train_everywhere(_cnn_model_fn, _images([4, 3, 2]), ["auto", "vectorized"])
    auto = outcome["auto"]
    # pfor would run the filter gradient of each client's convolutions in a loop over clients inside every step.
    assert auto.strategy == "sequential"
    assert auto.reason.endswith("in a loop over clients") and "Conv2DBackpropFilter" in auto.reason, auto.reason
    # Forced, it runs vectorized, and pfor's own warning about the loop is not hidden.
    assert outcome["vectorized"].strategy == "vectorized"
    assert any("Conv2DBackpropFilter uses a while_loop" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------
# The sequential path reads each client's elements from the cohort's tensors.

ROW = fedcore.to_type((tf.float32, [None]))


@fedcore.tf_computation(fedcore.to_type((tf.float32, [2])), ROW)
def _ordered_step(acc, batch):
    # Order-sensitive: a different order or batching of the same examples gives another result.
    return tf.stack([acc[0] * 0.5 + tf.reduce_sum(batch), acc[1] + tf.cast(tf.size(batch), tf.float32)])


@fedcore.federated_computation(fedcore.SequenceType(ROW))
def _fold_client(batches):
    return fedcore.sequence_reduce(batches, np.zeros(2, np.float32), _ordered_step)


@fedcore.tf_computation(fedcore.SequenceType(ROW))
def _iterate_client(ds):
    # Client code that iterates its dataset itself: it needs a tf.data.Dataset.
    acc = tf.zeros([2])
    for batch in ds:
        acc = tf.stack([acc[0] * 0.5 + tf.reduce_sum(batch), acc[1] + tf.cast(tf.size(batch), tf.float32)])
    return acc


@fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(ROW)))
def _both(data):
    return fedcore.federated_map(_fold_client, data), fedcore.federated_map(_iterate_client, data)


def _ragged(sizes, batch, shuffle, seed):
    out = []
    for k, n in enumerate(sizes):
        ds = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.float32) + 1000 * k)
        if shuffle:
            ds = ds.shuffle(shuffle, seed=seed + k)
        out.append(ds.batch(batch))
    return out


def _check_sequential(data, against_reference):
    """The sequential path's results: equal to the reference's (where it draws the same orders) and
    to the vectorized lowering's; within one call both uses of a client's data see the same order."""
    executor = TensorFlowExecutor(strategy="sequential")
    folded, iterated = execute(_both, (data,), {}, executor=executor)
    assert [c.strategy for c in executor.strategy_report] == ["sequential", "sequential"]
    np.testing.assert_allclose(np.asarray(folded), np.asarray(iterated), rtol=1e-6)
    auto = TensorFlowExecutor(strategy="auto")
    vectorized_fold, _ = execute(_both, (data,), {}, executor=auto)
    if auto.strategy_report[0].strategy == "vectorized":
        np.testing.assert_allclose(np.asarray(folded), np.asarray(vectorized_fold), rtol=1e-6)
    if against_reference:
        expected_fold, expected_iterated = execute(_both, (data,), {}, executor=fedcore.ReferenceExecutor())
        np.testing.assert_allclose(np.asarray(folded), np.asarray(expected_fold), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(iterated), np.asarray(expected_iterated), rtol=1e-6)


def test_sequential_path_on_ragged_clients_matches_the_reference():
    _check_sequential(_ragged([1, 19, 20, 21, 0, 40], batch=20, shuffle=0, seed=0), against_reference=True)


# The reference reads a seeded shuffle through tf.data where a TF computation iterates the dataset, so
# its orders are not the replayed ones (docs/performance.md): shuffled data is checked against the
# vectorized lowering, which replays the same orders by other code.
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 25), min_size=1, max_size=4),
    batch=st.integers(1, 6),
    shuffle=st.sampled_from([0, 0, 1, 4, 50]),
    seed=st.integers(0, 100),
)
def test_sequential_path_matches_the_reference_on_any_sizes(sizes, batch, shuffle, seed):
    _check_sequential(_ragged(sizes, batch, shuffle, seed), against_reference=not shuffle)


@pytest.mark.parametrize("quiet", ["level", "filter"])
def test_auto_chooses_the_same_when_the_user_silences_tensorflows_logger(quiet):
    # TFF's tutorials often call tf.get_logger().setLevel("ERROR"); pfor's notes (warnings) must still reach
    # the executor, which reads them to choose, or the CNN would run vectorized where it cannot.
    import logging

    logger = logging.getLogger("tensorflow")
    level, drop_all = logger.level, logging.Filter("no such logger")  # a filter that drops every record
    if quiet == "level":
        logger.setLevel(logging.ERROR)
    else:
        logger.addFilter(drop_all)
    try:
        outcome = _train_everywhere(_cnn_model_fn, _images([4, 3, 2]), ["auto"])
    finally:
        logger.setLevel(level)
        logger.removeFilter(drop_all)
    assert outcome["auto"].strategy == "sequential"
    assert "Conv2DBackpropFilter" in outcome["auto"].reason

"""TFF's API names after ``import fedcore``: each one exercised against fedcore's own."""

import collections
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import learning
from fedcore.compiler import forms
from fedcore.learning import aggregators as fedcore_aggregators
from fedcore.runtime.tensorflow import TensorFlowExecutor

ROOT = Path(__file__).resolve().parent.parent
INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 4], tf.float32), y=tf.TensorSpec([None], tf.int32))


def _keras_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros")])


def model_fn():
    return learning.models.from_keras_model(
        _keras_model(),
        keras.losses.SparseCategoricalCrossentropy(),
        INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def own_model_fn():
    return learning.from_keras_model(
        _keras_model(),
        keras.losses.SparseCategoricalCrossentropy(),
        INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def client_data(num_examples, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, 4)).astype(np.float32)
    y = (np.argmax(x[:, :3], axis=1)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(5)


DATA = [client_data(10, 0), client_data(10, 1)]
UNEQUAL = [client_data(5, 0), client_data(20, 1)]


def trainable(weights):
    return [np.asarray(v) for v in weights.trainable.values()]


@pytest.fixture(autouse=True)
def restore_default_executor():
    yield
    fedcore.set_default_executor(None)


@pytest.fixture(scope="module")
def fed_avg():
    return learning.algorithms.build_weighted_fed_avg(model_fn, client_optimizer_fn=learning.optimizers.build_sgdm(0.5))


# --------------------------------------------------------------------------
# The surface after ``import fedcore``.


def test_submodules_are_reachable_as_attributes_and_loaded_on_first_use():
    # Forget one subpackage, as a fresh ``import fedcore`` would not have it, and reach it again.
    saved = sys.modules.pop("fedcore.tensorflow", None)
    fedcore.__dict__.pop("tensorflow", None)
    try:
        assert fedcore.tensorflow.computation is fedcore.tf_computation
        assert "fedcore.tensorflow" in sys.modules
    finally:
        if saved is not None:
            sys.modules["fedcore.tensorflow"] = saved
            fedcore.tensorflow = saved
    assert fedcore.learning.algorithms.build_weighted_fed_avg and fedcore.simulation.ClientData
    assert fedcore.backends.native and fedcore.aggregators.MeanFactory and fedcore.utils.IterativeProcess
    assert {"learning", "simulation", "backends", "templates"} <= set(dir(fedcore))
    with pytest.raises(AttributeError, match="module 'fedcore' has no attribute 'no_such_module'"):
        fedcore.no_such_module
    # fedcore/__init__.py imports none of them itself: they cost nothing until used.
    source = (ROOT / "fedcore" / "__init__.py").read_text()
    for name in fedcore._SUBMODULES:
        assert f"fedcore.{name} import" not in source and f"import fedcore.{name}" not in source


def test_one_iterative_process_class_under_its_names():
    assert fedcore.templates.IterativeProcess is fedcore.utils.IterativeProcess is learning.IterativeProcess
    assert fedcore.templates.LearningProcess is learning.templates.LearningProcess
    assert issubclass(fedcore.templates.LearningProcess, learning.IterativeProcess)


def test_re_exports_are_the_same_objects():
    assert fedcore.runtime.TensorFlowExecutor is TensorFlowExecutor
    assert fedcore.compiler.to_map_reduce_form is forms.to_map_reduce_form
    assert fedcore.compiler.to_distribute_aggregate_form is forms.to_distribute_aggregate_form
    assert fedcore.tensorflow.computation is fedcore.tf_computation


def test_tensorflow_computation_decorates():
    @fedcore.tensorflow.computation(tf.int32)
    def add_one(x):
        return x + 1

    assert str(add_one.type_signature) == "(int32 -> int32)"
    assert add_one(2) == 3


@fedcore.federated_computation
def _count_clients():
    return fedcore.federated_sum(fedcore.federated_value(1, fedcore.CLIENTS))


def test_backends_switch_the_default_executor():
    fast = fedcore.backends.native.set_sync_local_cpp_execution_context(default_num_clients=3)
    assert isinstance(fast, TensorFlowExecutor) and fedcore.get_default_executor() is fast
    assert _count_clients() == 3
    ref = fedcore.backends.reference.set_reference_context()
    assert isinstance(ref, fedcore.ReferenceExecutor) and fedcore.get_default_executor() is ref
    with pytest.raises(fedcore.ExecutionError):
        _count_clients()  # no number of clients: refused, not run on zero clients
    test_ctx = fedcore.backends.test.set_sync_test_cpp_execution_context(default_num_clients=2)
    assert isinstance(test_ctx, fedcore.ReferenceExecutor) and _count_clients() == 2
    python_ctx = fedcore.backends.native.set_local_python_execution_context(default_num_clients=4)
    assert isinstance(python_ctx, TensorFlowExecutor) and _count_clients() == 4
    own = fedcore.backends.set_tensorflow_executor(num_clients=5, strategy="sequential")
    assert own.strategy == "sequential" and fedcore.get_default_executor() is own and _count_clients() == 5
    assert isinstance(fedcore.backends.set_reference_executor(), fedcore.ReferenceExecutor)


def test_backends_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="named devices"):
        fedcore.backends.native.set_local_python_execution_context(server_tf_device="/cpu:0")
    with pytest.raises(ValueError, match="default_num_clients must be a non-negative int"):
        fedcore.backends.native.set_sync_local_cpp_execution_context(default_num_clients=-1)
    with pytest.raises(TypeError, match="stream_structs"):
        fedcore.backends.native.set_sync_local_cpp_execution_context(stream_structs="yes")
    with pytest.raises(ValueError, match="max_fanout"):
        fedcore.backends.native.set_local_python_execution_context(max_fanout=0)


def test_mapreduce_backend_names_give_the_forms():
    @fedcore.federated_computation(fedcore.type_at_server("float32"), fedcore.type_at_clients("float32"))
    def round_(state, data):
        return state, fedcore.federated_sum(data)

    mrf = fedcore.backends.mapreduce.get_map_reduce_form_for_computation(round_)
    assert isinstance(mrf, fedcore.backends.mapreduce.MapReduceForm)
    assert mrf.type_signature == forms.to_map_reduce_form(round_).type_signature == round_.type_signature
    daf = fedcore.backends.mapreduce.get_distribute_aggregate_form_for_computation(round_)
    assert isinstance(daf, forms.DistributeAggregateForm)


# --------------------------------------------------------------------------
# tff.learning names.


def test_build_weighted_fed_avg_matches_fedcores_own_process(fed_avg):
    own = learning.build_federated_averaging_process(own_model_fn, client_optimizer_fn=lambda: learning.optimizers.SGD(0.5))
    state, own_state = fed_avg.initialize(), own.initialize()
    losses = []
    for _ in range(2):
        out = fed_avg.next(state, DATA)
        assert isinstance(out, learning.templates.LearningProcessOutput)
        own_state, own_metrics = own.next(own_state, DATA)
        state, metrics = out.state, out.metrics
        assert list(metrics) == ["distributor", "client_work", "aggregator", "finalizer"]
        assert dict(metrics["client_work"]["train"]) == dict(own_metrics)
        assert metrics["finalizer"]["update_non_finite"] == 0
        losses.append(float(metrics["client_work"]["train"]["loss"]))
    assert losses[1] < losses[0]
    for a, b in zip(trainable(fed_avg.get_model_weights(state)), trainable(own_state.model)):
        np.testing.assert_array_equal(a, b)


def test_a_round_without_examples_reports_update_non_finite(fed_avg):
    state = fed_avg.initialize()
    empty = client_data(10, 0).take(0)
    out = fed_avg.next(state, [empty])
    assert out.metrics["finalizer"]["update_non_finite"] == 1
    for a, b in zip(trainable(out.state.model), trainable(state.model)):
        np.testing.assert_array_equal(a, b)


def test_get_and_set_model_weights(fed_avg):
    trained = fed_avg.next(fed_avg.initialize(), DATA).state
    weights = fed_avg.get_model_weights(trained)
    assert isinstance(weights, learning.ModelWeights)
    fresh = fed_avg.set_model_weights(fed_avg.initialize(), weights)
    assert fresh.optimizer_state == (0,)
    for a, b in zip(trainable(fresh.model), trainable(trained.model)):
        np.testing.assert_array_equal(a, b)
    # As TFF's process.get_model_weights(state).assign_weights_to(keras_model): a fresh copy of the model
    # (its layers numbered after the ones built before it) takes the trained weights by name.
    model = _keras_model()
    weights.assign_weights_to(model)
    assert len(model.trainable_variables) == len(trainable(weights)) > 0
    for variable, value in zip(model.trainable_variables, trainable(weights)):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert any(np.any(value != 0) for value in trainable(weights))


def test_build_fed_eval_gives_fedcores_evaluation(fed_avg):
    trained = fed_avg.next(fed_avg.initialize(), DATA).state
    evaluation = learning.algorithms.build_fed_eval(model_fn)
    state = evaluation.set_model_weights(evaluation.initialize(), fed_avg.get_model_weights(trained))
    out = evaluation.next(state, UNEQUAL)
    own = learning.build_federated_evaluation(own_model_fn)(trained.model, UNEQUAL)
    assert dict(out.metrics["client_work"]["eval"]["current_round_metrics"]) == dict(own)
    for a, b in zip(trainable(out.state), trainable(trained.model)):
        np.testing.assert_array_equal(a, b)


def _deltas(process, start):
    """Each client's delta alone (one client's weighted mean is its delta)."""
    w0 = trainable(start.model)
    return w0, [[a - b for a, b in zip(trainable(process.next(start, [d]).state.model), w0)] for d in UNEQUAL]


def test_uniform_weighting_counts_each_client_once(fed_avg):
    start = fed_avg.initialize()
    w0, deltas = _deltas(fed_avg, start)
    uniform = learning.algorithms.build_unweighted_fed_avg(model_fn, learning.optimizers.build_sgdm(0.5))
    got = trainable(uniform.next(start, UNEQUAL).state.model)
    for g, w, d0, d1 in zip(got, w0, *deltas):
        np.testing.assert_allclose(g, w + (d0 + d1) / 2, rtol=1e-5, atol=1e-7)
    by_examples = trainable(fed_avg.next(start, UNEQUAL).state.model)
    assert not np.allclose(by_examples[0], got[0])


def test_a_factory_is_a_model_aggregator(fed_avg):
    start = fed_avg.initialize()
    w0, deltas = _deltas(fed_avg, start)
    summed = learning.algorithms.build_weighted_fed_avg(
        model_fn, learning.optimizers.build_sgdm(0.5), model_aggregator=fedcore.aggregators.SumFactory()
    )
    for g, w, d0, d1 in zip(trainable(summed.next(start, UNEQUAL).state.model), w0, *deltas):
        np.testing.assert_allclose(g, w + d0 + d1, rtol=1e-5, atol=1e-6)


UPDATES = [collections.OrderedDict(w=np.array([1.0, -2.0], np.float32)), collections.OrderedDict(w=np.array([3.0, 0.5], np.float32))]
U0, U1 = (u["w"].astype(np.float64) for u in UPDATES)


def _aggregate(factory, weights):
    """Runs ``factory``'s aggregator on UPDATES with the clients' ``weights``, as a training round would."""
    aggregator = factory.to_aggregator() if isinstance(factory, fedcore.aggregators.AggregationFactory) else factory
    update_type = fedcore.to_type(collections.OrderedDict(w=fedcore.TensorType(tf.float32, [2])))

    @fedcore.federated_computation(
        fedcore.type_at_clients(update_type), fedcore.type_at_clients(tf.float32), fedcore.type_at_server(tf.int64)
    )
    def run(updates, client_weights, round_number):
        return aggregator.aggregate(updates, client_weights, round_number)

    return run(UPDATES, [np.float32(w) for w in weights], np.int64(0))["w"]


def test_aggregator_factories_aggregate_as_tff_says():
    factories = fedcore.aggregators
    step = 1.0 / (2**20 - 1)  # a fixed-point unit per unit of bound
    np.testing.assert_allclose(_aggregate(factories.MeanFactory(), [1, 3]), (U0 + 3 * U1) / 4, rtol=1e-6)
    np.testing.assert_allclose(_aggregate(factories.SumFactory(), [1, 3]), U0 + U1, rtol=1e-6)
    np.testing.assert_allclose(_aggregate(factories.SecureSumFactory(4.0), [1, 3]), U0 + U1, atol=2 * 4.0 * step)
    # Clipped to [-1, 2] per coordinate before the sum: [1, -1] + [2, 0.5].
    np.testing.assert_allclose(_aggregate(factories.SecureSumFactory(2.0, -1.0), [1, 3]), [3.0, -0.5], atol=2 * 2.0 * step)
    secure_mean = factories.MeanFactory(value_sum_factory=factories.SecureSumFactory(4.0))
    np.testing.assert_allclose(_aggregate(secure_mean, [1, 3]), (U0 + 3 * U1) / 4, atol=4.0 * step + 1e-6)
    assert np.all(np.isnan(_aggregate(factories.MeanFactory(), [0, 0])))
    np.testing.assert_array_equal(_aggregate(factories.MeanFactory(no_nan_division=True), [0, 0]), [0.0, 0.0])
    # Unweighted: no noise and a large clip give the sum over clients_per_round; clip=1 scales each to norm 1.
    dp = factories.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier=0.0, clients_per_round=4, clip=100.0)
    np.testing.assert_allclose(_aggregate(dp, [1, 3]), (U0 + U1) / 4, rtol=1e-6)
    dp_clipped = factories.DifferentiallyPrivateFactory.gaussian_fixed(0.0, clients_per_round=2, clip=1.0)
    unit = lambda u: u / np.linalg.norm(u)  # noqa: E731
    np.testing.assert_allclose(_aggregate(dp_clipped, [1, 3]), (unit(U0) + unit(U1)) / 2, rtol=1e-5)
    noisy = factories.DifferentiallyPrivateFactory.gaussian_fixed(1.0, clients_per_round=2, clip=1.0)
    assert not np.allclose(_aggregate(noisy, [1, 3]), (unit(U0) + unit(U1)) / 2)
    uniform = learning.aggregator_factories.UniformWeighting(None)
    np.testing.assert_allclose(_aggregate(uniform, [1, 3]), (U0 + U1) / 2, rtol=1e-6)
    np.testing.assert_allclose(_aggregate(uniform, [1, 0]), U0, rtol=1e-6)


def test_aggregator_factories_turn_into_fedcores_aggregators():
    factories = fedcore.aggregators
    assert isinstance(factories.MeanFactory().to_aggregator(), fedcore_aggregators.MeanAggregator)
    secure = factories.MeanFactory(factories.SecureSumFactory(0.5), factories.SecureSumFactory(1000, 0)).to_aggregator()
    assert isinstance(secure, fedcore_aggregators.SecureAggregator)
    assert (secure.update_bound, secure.max_weight) == (0.5, 1000)
    dp = factories.DifferentiallyPrivateFactory.gaussian_fixed(1.2, 10, 0.1).to_aggregator()
    assert isinstance(dp, fedcore_aggregators.DPAggregator)
    assert (dp.noise_multiplier, dp.clip_norm, dp.denominator) == (1.2, 0.1, 10.0)
    assert isinstance(factories.SecureSumFactory(1.0), factories.UnweightedAggregationFactory)
    assert isinstance(factories.MeanFactory(), factories.WeightedAggregationFactory)


def test_bad_factories_and_options_are_refused():
    factories = fedcore.aggregators
    with pytest.raises(ValueError, match="lower_bound_threshold must be below"):
        factories.SecureSumFactory(1.0, 2.0)
    with pytest.raises(TypeError, match="upper_bound_threshold must be a finite number"):
        factories.SecureSumFactory("1")
    with pytest.raises(ValueError, match="make value_sum_factory a SecureSumFactory too"):
        factories.MeanFactory(weight_sum_factory=factories.SecureSumFactory(100, 0))
    with pytest.raises(ValueError, match="symmetric range"):
        factories.MeanFactory(value_sum_factory=factories.SecureSumFactory(1.0, 0.0))
    with pytest.raises(TypeError, match="no TensorFlow Privacy DPQuery"):
        factories.DifferentiallyPrivateFactory(object())
    with pytest.raises(ValueError, match="clients_per_round must be positive"):
        factories.DifferentiallyPrivateFactory.gaussian_fixed(1.0, 0, 1.0)
    build = learning.algorithms.build_weighted_fed_avg
    sgd = learning.optimizers.build_sgdm(0.1)
    with pytest.raises(TypeError, match="model_aggregator must be a fedcore.aggregators factory"):
        build(model_fn, sgd, model_aggregator="mean")
    with pytest.raises(ValueError, match="model_distributor is not supported"):
        build(model_fn, sgd, model_distributor=object())
    with pytest.raises(TypeError, match="client_weighting must be"):
        build(model_fn, sgd, client_weighting=lambda output: 1.0)
    with pytest.raises(TypeError, match="client_optimizer_fn is required"):
        build(model_fn, None)


def test_from_keras_model_takes_tffs_arguments():
    model = learning.models.from_keras_model(
        _keras_model(), [keras.losses.SparseCategoricalCrossentropy()], INPUT_SPEC, loss_weights=[1.0]
    )
    assert isinstance(model, learning.KerasModel)
    with pytest.raises(ValueError, match="loss_weights must be None or \\[1.0\\]"):
        learning.models.from_keras_model(_keras_model(), "sparse_categorical_crossentropy", INPUT_SPEC, loss_weights=[0.5])
    with pytest.raises(ValueError, match="one loss, got 2 losses"):
        learning.models.from_keras_model(_keras_model(), ["mse", "mae"], INPUT_SPEC)
    with pytest.raises(ValueError, match="metrics_aggregator is not supported"):
        learning.models.from_keras_model(_keras_model(), "mse", INPUT_SPEC, metrics_aggregator=sum)


def test_tff_optimizer_builders():
    opt = learning.optimizers
    assert opt.build_sgdm() == opt.SGD(0.01)
    assert opt.build_sgdm(0.1, momentum=0.9) == opt.SGD(0.1, momentum=0.9)
    assert opt.build_adam() == opt.Adam(0.001, 0.9, 0.999, 1e-7)
    assert opt.build_adam(0.01, beta_1=0.5) == opt.Adam(0.01, beta_1=0.5)
    # TFF's momentum rule, a = m * a + g; w -= lr * a, gives the same steps.
    sgdm = opt.build_sgdm(0.1, momentum=0.9)
    grads = [np.array([1.0, -2.0], np.float32), np.array([0.5, 0.5], np.float32), np.array([-3.0, 1.0], np.float32)]
    w, state = tf.constant([1.0, 1.0]), sgdm.initialize(tf.constant([1.0, 1.0]))
    expected, acc = np.array([1.0, 1.0], np.float32), np.zeros(2, np.float32)
    for g in grads:
        state, w = sgdm.apply(state, w, tf.constant(g))
        acc = 0.9 * acc + g
        expected = expected - 0.1 * acc
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_learning_process_checks_its_computations():
    @fedcore.federated_computation
    def initialize():
        return fedcore.federated_value(0, fedcore.SERVER)

    @fedcore.federated_computation(fedcore.type_at_server(tf.int32), fedcore.type_at_clients(tf.int32))
    def next_pair(state, data):
        return state, fedcore.federated_sum(data)

    @fedcore.tf_computation(tf.int32)
    def get_weights(state):
        return state

    @fedcore.tf_computation(tf.int32, tf.int32)
    def set_weights(state, weights):
        return weights

    with pytest.raises(TypeError, match="must return <state=...,metrics=...>"):
        learning.templates.LearningProcess(initialize, next_pair, get_weights, set_weights)
    process = learning.templates.LearningProcess.from_iterative_process(
        learning.IterativeProcess(initialize, next_pair), get_weights, set_weights
    )
    out = process.next(process.initialize(), [1, 2, 3])
    assert (out.state, out.metrics) == (0, 6)
    assert process.set_model_weights(out.state, 5) == 5

    @fedcore.tf_computation(tf.float32)
    def wrong_get(state):
        return state

    with pytest.raises(TypeError, match="get_model_weights must take the state's member type int32"):
        learning.templates.LearningProcess.from_iterative_process(
            learning.IterativeProcess(initialize, next_pair), wrong_get, set_weights
        )


def test_learning_process_runs_on_the_tensorflow_executor_as_on_the_reference(fed_avg):
    start = fed_avg.initialize()
    reference = fed_avg.next(start, UNEQUAL)
    with fedcore.execution_context(TensorFlowExecutor()):
        fast = fed_avg.next(start, UNEQUAL)
    assert isinstance(fast, learning.templates.LearningProcessOutput)
    assert fast.metrics["finalizer"]["update_non_finite"] == reference.metrics["finalizer"]["update_non_finite"] == 0
    assert fast.metrics["distributor"] == reference.metrics["distributor"] == ()
    for name, value in reference.metrics["client_work"]["train"].items():
        np.testing.assert_allclose(fast.metrics["client_work"]["train"][name], value, rtol=1e-5)
    for a, b in zip(trainable(fast.state.model), trainable(reference.state.model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

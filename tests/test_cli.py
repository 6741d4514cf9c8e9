"""The ``fedcore`` command line: ``train`` (options, outputs, bad arguments) and ``signature``."""

import collections
import csv
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore import cli

METRICS = fedcore.type_at_clients(collections.OrderedDict(loss=tf.float32, num_examples=tf.int32))


@fedcore.federated_computation(METRICS)
def aggregate(metrics):
    return collections.OrderedDict(
        loss=fedcore.federated_mean(metrics.loss, weight=metrics.num_examples),
        num_examples=fedcore.federated_sum(metrics.num_examples),
    )


namespace = type("namespace", (), {"aggregate": aggregate})


@fedcore.tf_computation
def polymorphic(x):
    return x


# --------------------------------------------------------------------------
# fedcore signature


def test_signature_prints_compact_and_formatted(capsys):
    assert cli.main(["signature", "tests.test_cli:aggregate"]) == 0
    out = capsys.readouterr().out
    compact = "({<loss=float32,num_examples=int32>}@CLIENTS -> <loss=float32@SERVER,num_examples=int32@SERVER>)"
    assert f"compact:   {compact}" in out
    formatted = aggregate.type_signature.formatted()
    assert "\n" in formatted
    assert "\n".join("  " + line for line in formatted.splitlines()) in out
    assert out.splitlines()[0] == "tests.test_cli:aggregate"


def test_signature_follows_dotted_attributes(capsys):
    assert cli.main(["signature", "tests.test_cli:namespace.aggregate"]) == 0
    assert "num_examples=int32@SERVER" in capsys.readouterr().out


@pytest.mark.parametrize(
    "target, message",
    [
        ("tests.test_cli", "expected MODULE:ATTR"),
        ("no_such_module_here:x", "cannot import module 'no_such_module_here'"),
        ("tests.test_cli:missing", "tests.test_cli has no attribute 'missing'"),
        ("tests.test_cli:namespace.nothing", "tests.test_cli.namespace has no attribute 'nothing'"),
        ("tests.test_cli:namespace", "not a computation"),
        ("tests.test_cli:polymorphic", "tests.test_cli:polymorphic has no type signature: polymorphic is polymorphic"),
    ],
)
def test_signature_bad_targets_are_argument_errors(capsys, target, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["signature", target])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fedcore" in err and message in err


def test_signature_of_a_type_prints_it(capsys):
    assert cli.main(["signature", "tests.test_cli:METRICS"]) == 0
    assert "{<loss=float32,num_examples=int32>}@CLIENTS" in capsys.readouterr().out


# --------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--rounds", "0"], "argument --rounds: expected a positive whole number, got 0"),
        (["train", "--rounds", "many"], "argument --rounds: expected a positive whole number, got 'many'"),
        (["train", "--clients-per-round", "-3"], "argument --clients-per-round"),
        (["train", "--client-lr", "0"], "argument --client-lr: expected a positive number"),
        (["train", "--server-lr", "nan"], "argument --server-lr: expected a positive number"),
        (["train", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
        (["train", "--executor", "gpu"], "argument --executor: invalid choice: 'gpu'"),
        (["train", "--emnist", "/no/such/dir"], "argument --emnist: /no/such/dir is not a directory"),
        (["train", "--seed", "-1"], "argument --seed"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--checkpoint-every", "-1"], "argument --checkpoint-every: expected a whole number >= 0"),
        (["train", "--min-clients", "0"], "argument --min-clients: expected a positive whole number, got 0"),
        (["train", "--max-dropped-fraction", "2"], "argument --max-dropped-fraction: expected a number between 0 and 1"),
        (["train", "--resume", "/no/such/run"], "argument --resume: /no/such/run is not a directory"),
        (["train", "--num-clients", "1000"], "argument --num-clients: num_clients must be between 1 and 359"),
        (["train", "--clients-per-round", "2", "--min-clients", "5"],
         "argument --min-clients: 5 is more than the 2 clients per round"),
    ],
)
def test_bad_arguments_exit_2_with_argparse_messages(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fedcore" in err and message in err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--emnist", "--model", "--clients-per-round", "--rounds", "--epochs", "--batch-size",
                   "--client-lr", "--server-lr", "--executor", "--seed", "--out", "--checkpoint-every",
                   "--keep-checkpoints", "--resume", "--min-clients", "--max-dropped-fraction"):
        assert option in out


# --------------------------------------------------------------------------
# Pieces of train


def test_data_model_mismatch_shows_both_types():
    spec = cli.input_spec()
    cli.check_data_matches_model("<x=float32[?,784],y=int32[?,1]>", spec)
    with pytest.raises(TypeError) as info:
        cli.check_data_matches_model("<x=float32[?,28,28],y=int32[?,1]>", spec)
    message = str(info.value)
    assert "model input_spec: <x=float32[?,784],y=int32[?,1]>" in message
    assert "data batches:     <x=float32[?,28,28],y=int32[?,1]>" in message


def test_preprocess_makes_batches_the_models_take():
    from fedcore.simulation import ClientData

    data = ClientData.from_tensor_slices(
        {"a": collections.OrderedDict(label=np.arange(5, dtype=np.int32), pixels=np.ones((5, 28, 28), np.float32))}
    )
    batches = data.preprocess(cli.preprocess(batch_size=2, epochs=2))
    assert str(batches.element_type_structure) == "<x=float32[?,784],y=int32[?,1]>"
    sizes = [len(b["y"]) for b in batches.create_tf_dataset_for_client("a").as_numpy_iterator()]
    assert sizes == [2, 2, 2, 2, 2]
    for name in cli.MODELS:
        model = cli.keras_model(name)
        assert model(np.ones((3, 784), np.float32)).shape == (3, 10)


def test_find_metric_looks_through_nested_metrics():
    metrics = collections.OrderedDict(
        broadcast=(), train=collections.OrderedDict(sparse_categorical_accuracy=0.5, loss=1.25, num_examples=10)
    )
    assert cli.find_metric(metrics, cli.LOSS_NAMES, prefer=("train",)) == 1.25
    assert cli.find_metric(metrics, cli.ACCURACY_NAMES) == 0.5
    assert cli.find_metric({"eval": {"accuracy": np.float32(0.75)}}, cli.ACCURACY_NAMES) == 0.75
    assert cli.find_metric({"other": 1.0}, cli.LOSS_NAMES) is None


def _rows(n):
    return [
        dict(round=r, train_loss=2.0 / r, train_accuracy=1 - 0.5 / r, heldout_loss=2.2 / r,
             heldout_accuracy=1 - 0.6 / r, seconds=0.1)
        for r in range(1, n + 1)
    ]


def test_csv_and_plot_outputs(tmp_path):
    rows = _rows(5)
    cli.write_csv(tmp_path / "metrics.csv", rows)
    with open(tmp_path / "metrics.csv") as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0].keys()) == cli.CSV_COLUMNS
    assert [int(r["round"]) for r in read] == [1, 2, 3, 4, 5]
    cli.plot_metrics(tmp_path / "metrics.png", rows, title="test")
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# fedcore train, end to end (tiny runs)

TINY = ["--num-clients", "6", "--clients-per-round", "3", "--rounds", "2", "--epochs", "1", "--batch-size", "32"]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _event_scalars(directory):
    from tensorflow.core.util import event_pb2

    files = list(directory.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {directory}"
    scalars = collections.defaultdict(dict)
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            scalars[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_train_writes_csv_tensorboard_and_png(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "round  train loss  train acc  held-out acc  seconds" in printed
    assert "tensorflow executor" in printed and "linear model on embedded digits" in printed
    rows = _read_csv(out / "metrics.csv")
    assert tuple(rows[0].keys()) == cli.CSV_COLUMNS
    assert [int(r["round"]) for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= float(row["train_accuracy"]) <= 1.0 and 0.0 <= float(row["heldout_accuracy"]) <= 1.0
        assert float(row["train_loss"]) > 0 and float(row["heldout_loss"]) > 0 and float(row["seconds"]) > 0
        assert f"{int(row['round']):>5}  {float(row['train_loss']):>10.4f}" in printed
    scalars = _event_scalars(out / "tensorboard")
    assert set(scalars) == {"train/loss", "train/accuracy", "heldout/loss", "heldout/accuracy", "seconds_per_round"}
    assert scalars["heldout/accuracy"] == pytest.approx({1: float(rows[0]["heldout_accuracy"]), 2: float(rows[1]["heldout_accuracy"])})
    png = (out / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_train_reference_executor_is_deterministic_and_learns(tmp_path):
    argv = ["train", "--num-clients", "10", "--clients-per-round", "5", "--rounds", "5", "--epochs", "2",
            "--executor", "reference", "--seed", "3"]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = _read_csv(tmp_path / "a" / "metrics.csv"), _read_csv(tmp_path / "b" / "metrics.csv")
    for column in ("train_loss", "heldout_accuracy"):
        assert [r[column] for r in a] == [r[column] for r in b]
    accuracy = [float(r["heldout_accuracy"]) for r in a]
    assert accuracy[-1] > accuracy[0] + 0.1
    assert float(a[-1]["train_loss"]) < float(a[0]["train_loss"])


def test_train_cnn(tmp_path, caplog):
    argv = ["train", *TINY, "--rounds", "1", "--model", "cnn", "--eval-clients", "2", "--out", str(tmp_path)]
    with caplog.at_level("WARNING", logger="tensorflow"):
        assert cli.main(argv) == 0
    assert len(_read_csv(tmp_path / "metrics.csv")) == 1
    # TensorFlow's notes on how it vectorizes the CNN's client work ("Conv2DBackpropFilter uses a while_loop")
    assert not [r for r in caplog.records if "while_loop" in r.getMessage()]


def test_train_without_held_out_evaluation(tmp_path):
    assert cli.main(["train", *TINY, "--rounds", "1", "--executor", "reference", "--eval-clients", "0",
                     "--out", str(tmp_path)]) == 0
    row = _read_csv(tmp_path / "metrics.csv")[0]
    assert row["heldout_accuracy"] == "" and row["train_accuracy"] != ""


def test_train_default_out_is_a_timestamped_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *TINY, "--rounds", "1", "--executor", "reference"]) == 0
    (run,) = (tmp_path / "fedcore-runs").iterdir()
    assert run.name[:8].isdigit() and (run / "metrics.csv").is_file() and (run / "metrics.png").is_file()


def test_train_on_emnist_files(tmp_path):
    from tests.simulation.conftest import write_emnist_like

    sizes = {f"f{i:04d}_00": 6 + i for i in range(4)}
    write_emnist_like(tmp_path / "fed_emnist_digitsonly_train.h5", sizes, seed=0)
    write_emnist_like(tmp_path / "fed_emnist_digitsonly_test.h5", sizes, seed=1)
    out = tmp_path / "run"
    argv = ["train", "--emnist", str(tmp_path), "--clients-per-round", "2", "--rounds", "1",
            "--executor", "reference", "--out", str(out)]
    assert cli.main(argv) == 0
    assert len(_read_csv(out / "metrics.csv")) == 1


def test_train_reports_a_bad_emnist_file(tmp_path, capsys):
    (tmp_path / "fed_emnist_digitsonly_train.h5").write_bytes(b"not hdf5")
    (tmp_path / "fed_emnist_digitsonly_test.h5").write_bytes(b"not hdf5")
    assert cli.main(["train", "--emnist", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "fedcore train: error:" in err and "fed_emnist_digitsonly_train.h5" in err and "not a readable HDF5" in err


def test_more_clients_per_round_than_clients_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--num-clients", "5", "--clients-per-round", "6", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "argument --clients-per-round: 6 is more than the 5 clients" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_data_model_mismatch_stops_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        cli, "input_spec",
        lambda: collections.OrderedDict(x=tf.TensorSpec([None, 28, 28], tf.float32), y=tf.TensorSpec([None, 1], tf.int32)),
    )
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "does not match the model's input_spec" in err
    assert "<x=float32[?,28,28],y=int32[?,1]>" in err and "<x=float32[?,784],y=int32[?,1]>" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# Checkpoints, --resume, dropped clients and non-finite updates


def test_train_checkpoints_and_resume_continues_the_run(tmp_path, capsys):
    from fedcore.learning import checkpoint as ckpt

    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--checkpoint-every", "1", "--keep-checkpoints", "1", "--out", str(run)]) == 0
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["checkpoint-00000002.fckpt"]
    first = _read_csv(run / "metrics.csv")
    assert [(r["clients_dropped"], r["nonfinite_updates"]) for r in first] == [("0", "0"), ("0", "0")]
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--rounds", "4"]) == 0
    assert "after round 2 of 4" in capsys.readouterr().out
    rows = _read_csv(run / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [1, 2, 3, 4] and rows[:2] == first
    saved = ckpt.load_checkpoint(run / "checkpoints")
    assert saved.round_num == 4 and saved.extra["settings"]["num_clients"] == 6 and saved.extra["total_rounds"] == 4
    # The same run, uninterrupted, ends with the same model.
    assert cli.main(["train", *TINY, "--rounds", "4", "--out", str(tmp_path / "straight")]) == 0
    straight = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints")
    for x, y in zip(ckpt._nest.flatten(saved.state), ckpt._nest.flatten(straight.state)):
        assert np.array_equal(x, y)


def test_resume_errors_name_what_is_wrong(tmp_path, capsys):
    unsaved = tmp_path / "unsaved"
    assert cli.main(["train", *TINY, "--rounds", "1", "--executor", "reference", "--eval-clients", "0",
                     "--checkpoint-every", "0", "--out", str(unsaved)]) == 0
    assert not (unsaved / "checkpoints").exists()
    assert cli.main(["train", "--resume", str(unsaved)]) == 1
    assert f"{unsaved} holds no checkpoint to resume from" in capsys.readouterr().err

    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--executor", "reference", "--eval-clients", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 0  # a finished run: nothing left to train
    assert "the run has trained all 2 rounds" in capsys.readouterr().out
    assert len(_read_csv(run / "metrics.csv")) == 2
    for argv, message in [
        (["--out", str(tmp_path / "x")], "argument --out: not allowed with --resume"),
        (["--seed", "5"], "argument --seed: the run in"),
        (["--rounds", "1"], "argument --rounds: the run in"),
    ]:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--resume", str(run), *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err

    (path,) = (run / "checkpoints").iterdir()
    path.write_bytes(path.read_bytes()[:-10])
    assert cli.main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "fedcore train: error:" in err and str(path) in err and "SHA-256 does not match" in err


def _poisoned_data(monkeypatch, poison):
    """Six clients of random digits; ``poison`` maps client ids to a pixel value that breaks them.

    A value above 5 makes the client's pipeline raise (its map asserts the pixels are at most 5);
    NaN makes its update non-finite.
    """
    from fedcore.simulation import ClientData

    rng = np.random.default_rng(0)

    def client(name):
        pixels = rng.random((12, 28, 28)).astype(np.float32)
        if name in poison:
            pixels[:] = poison[name]
        return collections.OrderedDict(label=rng.integers(0, 10, 12).astype(np.int32), pixels=pixels)

    ids = [f"c{i}" for i in range(6)]
    train = ClientData.from_tensor_slices({cid: client(cid) for cid in ids})
    monkeypatch.setattr(cli, "load_client_data", lambda args: (train, train, "poisoned digits"))
    original = cli.preprocess

    def preprocess(batch_size, epochs):
        inner = original(batch_size, epochs)

        def check(e):
            tf.debugging.assert_equal(tf.reduce_any(e["pixels"] > 5.0), False, message="poisoned client")
            return e

        return lambda ds: inner(ds.map(check))

    monkeypatch.setattr(cli, "preprocess", preprocess)
    return ids


def test_train_drops_failing_clients_and_leaves_out_nonfinite_updates(tmp_path, monkeypatch, capsys):
    _poisoned_data(monkeypatch, {"c2": 9.0, "c4": np.nan})
    argv = ["train", "--clients-per-round", "6", "--rounds", "2", "--epochs", "1", "--eval-clients", "0"]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "round 1: dropped client c2 (" in out and "poisoned client" in out, out
    assert "round 2: left out 1 non-finite client update(s)" in out
    rows = _read_csv(tmp_path / "run" / "metrics.csv")
    assert [(r["clients_dropped"], r["nonfinite_updates"]) for r in rows] == [("1", "1"), ("1", "1")]
    from fedcore.learning import checkpoint as ckpt

    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints").state
    assert all(np.all(np.isfinite(x)) for x in ckpt._nest.flatten(state))
    # Below the policy the run stops with a clear error.
    assert cli.main([*argv, "--min-clients", "6", "--out", str(tmp_path / "strict")]) == 1
    err = capsys.readouterr().err
    assert "fedcore train: error: round 1 failed: the round failed: 1 of its 6 clients failed, leaving 5" in err
    assert "'c2'" in err and "the state is unchanged" in err


def test_a_failed_round_saves_the_last_good_state_for_resume(tmp_path, monkeypatch, capsys):
    from fedcore import simulation

    ids = [f"c{i}" for i in range(6)]
    # A client that round 2 samples but round 1 does not: round 1 succeeds, round 2 fails.
    first, second = set(simulation.sample_clients(ids, 3, 1, seed=0)), simulation.sample_clients(ids, 3, 2, seed=0)
    bad = next(c for c in second if c not in first)
    _poisoned_data(monkeypatch, {bad: 9.0})
    run = tmp_path / "run"
    argv = ["--clients-per-round", "3", "--rounds", "3", "--epochs", "1", "--eval-clients", "0"]
    assert cli.main(["train", *argv, "--min-clients", "3", "--checkpoint-every", "5", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "round 2 failed" in err and f"continue with --resume {run}" in err
    assert [int(r["round"]) for r in _read_csv(run / "metrics.csv")] == [1]
    # Resumed with a laxer policy, the run goes on from round 2 and drops the client.
    assert cli.main(["train", "--resume", str(run), "--min-clients", "2"]) == 0
    rows = _read_csv(run / "metrics.csv")
    assert [int(r["round"]) for r in rows] == [1, 2, 3] and rows[1]["clients_dropped"] == "1"


def test_train_on_ray_matches_the_tensorflow_executor(tmp_path):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        argv = ["train", *TINY, "--eval-clients", "2", "--seed", "4"]
        assert cli.main([*argv, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    finally:
        if started:
            ray.shutdown()
    assert cli.main([*argv, "--executor", "tensorflow", "--out", str(tmp_path / "tf")]) == 0
    on_ray, on_tf = _read_csv(tmp_path / "ray" / "metrics.csv"), _read_csv(tmp_path / "tf" / "metrics.csv")
    assert len(on_ray) == len(on_tf) == 2
    for a, b in zip(on_ray, on_tf):
        for column in ("train_loss", "heldout_accuracy"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-3, abs=1e-4)


def test_ray_address_is_passed_to_the_executor(monkeypatch, tmp_path):
    from fedcore.runtime import ray as ray_executor

    seen = {}

    class Stop(Exception):
        pass

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray_executor, "RayExecutor", fake)
    with pytest.raises(Stop):
        cli.main(["train", *TINY, "--executor", "ray", "--address", "auto", "--out", str(tmp_path)])
    assert seen == {"address": "auto"}
    assert cli.build_parser().parse_args(["train"]).address is None


# --------------------------------------------------------------------------
# Bad checkpoints and outputs, explicit settings on --resume, a full disk, an unreachable Ray cluster

REFERENCE = [*TINY, "--executor", "reference", "--eval-clients", "0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-round run with seed 5 and a checkpoint after each round; tests copy it before changing it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", *REFERENCE, "--seed", "5", "--checkpoint-every", "1", "--out", str(run)]) == 0
    return run


def _copy_run(run, tmp_path):
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def test_every_train_option_records_that_it_was_given():
    parser = cli.build_parser()
    assert parser.parse_args(["train"]).given_options == frozenset()
    args = parser.parse_args(["train", "--seed", "0", "--rounds", "20", "--model", "linear", "--eval-clients", "3"])
    assert args.given_options == {"seed", "rounds", "model", "eval_clients"}
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    for action in train._actions:
        if action.dest not in ("help",) and action.nargs != 0:  # flags (--overwrite, --quiet) are no settings
            assert type(action).__name__ == "_StoreGiven", action.dest


def test_resume_takes_an_explicit_setting_even_when_it_equals_the_default(finished_run, capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as info:  # 0 is --seed's default, but given, it contradicts the saved 5
        cli.resume_settings(parser.parse_args(["train", "--resume", str(finished_run), "--seed", "0"]), parser)
    assert info.value.code == 2
    assert f"argument --seed: the run in {finished_run} was trained with 5, not 0" in capsys.readouterr().err
    args = parser.parse_args(["train", "--resume", str(finished_run), "--seed", "5", "--rounds", "20"])
    cli.resume_settings(args, parser)
    assert args.seed == 5 and args.rounds == 20 and args.num_clients == 6  # --rounds 20 (the default) is kept
    args = parser.parse_args(["train", "--resume", str(finished_run)])
    cli.resume_settings(args, parser)
    assert args.seed == 5 and args.rounds == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: e["settings"].update(model="xyz"), "extra.settings.model: 'xyz' is not one of ['linear', 'cnn']"),
        (lambda e: e["settings"].update(epochs="two"), "extra.settings.epochs: 'two' is not of type 'integer'"),
        (lambda e: e["settings"].update(seed=1.5), "extra.settings.seed: 1.5 is not of type 'integer'"),
        (lambda e: e["settings"].update(client_lr=float("inf")), "extra.settings.client_lr: inf is not of type"),
        (lambda e: e["settings"].pop("batch_size"), "extra.settings: 'batch_size' is a required property"),
        (lambda e: e.update(total_rounds="abc"), "extra.total_rounds: 'abc' is not of type 'integer'"),
        (lambda e: e.update(rows={"round": 1}), "extra.rows: {'round': 1} is not of type 'array'"),
        (lambda e: e.update(rows=[{"round": 1}, {"round": 3}]), "extra.rows has the rounds [1, 3], not one row"),
        (lambda e: e["rows"][0].update(extra_column=1), "extra.rows[0]: Additional properties are not allowed"),
    ],
)
def test_resume_with_bad_metadata_is_a_clear_error(finished_run, tmp_path, capsys, change, field):
    from fedcore import learning

    run = _copy_run(finished_run, tmp_path)
    saved = learning.load_checkpoint(run / "checkpoints")
    change(saved.extra)
    learning.save_checkpoint(run / "checkpoints", saved.state, saved.round_num, extra=saved.extra)
    assert cli.main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedcore train: error: ") and str(saved.path) in err and field in err, err
    assert "Traceback" not in err


def test_out_that_is_a_file_is_an_argument_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in [(tmp_path / "file", "is a file, not a directory"),
                         (tmp_path / "file" / "run", f"is inside {tmp_path / 'file'}, which is a file")]:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *REFERENCE, "--out", str(out)])
        assert info.value.code == 2
        assert f"argument --out: {out} {message}" in capsys.readouterr().err


def test_a_full_disk_during_a_checkpoint_write_stops_the_run_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    import errno

    import fedcore._files

    real_open, calls = open, []

    def open_until_full(path, mode="r", *args):
        calls.append(path)
        f = real_open(path, mode, *args)
        if len(calls) == 2:  # the second checkpoint: the disk fills up during the write
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return f

    monkeypatch.setattr(fedcore._files, "open", open_until_full, raising=False)
    run = tmp_path / "run"
    assert cli.main(["train", *REFERENCE, "--checkpoint-every", "1", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"fedcore train: error: cannot write the checkpoint {run / 'checkpoints' / 'checkpoint-00000002.fckpt'}: " \
           "No space left on device; the previous checkpoint" in err and "Traceback" not in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-00000001.fckpt"]
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert "after round 1 of 2" in capsys.readouterr().out
    assert [int(r["round"]) for r in _read_csv(run / "metrics.csv")] == [1, 2]


def test_a_ray_address_where_nothing_listens_fails_within_seconds(tmp_path, monkeypatch, capsys):
    import socket
    import time

    import ray

    def init(*args, **kwargs):
        raise AssertionError("ray.init must not be reached")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    start = time.monotonic()
    assert cli.main(["train", *TINY, "--executor", "ray", "--address", f"127.0.0.1:{port}",
                     "--out", str(tmp_path / "run")]) == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"fedcore train: error: cannot reach a Ray cluster at 127.0.0.1:{port}" in err and "within 10 s" in err

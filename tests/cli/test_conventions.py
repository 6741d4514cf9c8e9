"""The ``fedcore`` command's conventions: fast help, --version, exit codes, --out, --config, Ctrl-C,
plain output in a pipe, --quiet and --verbose, missing extras, and the trained model it leaves."""

import ast
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import fedcore
from fedcore import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--num-clients", "6", "--clients-per-round", "3", "--rounds", "2", "--epochs", "1", "--batch-size", "32"]
QUICK = [*TINY, "--executor", "reference", "--eval-clients", "0"]


def _python(*args, timeout=120, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


# --------------------------------------------------------------------------
# Starting fast


def test_help_and_version_do_not_import_tensorflow():
    probe = (
        "import sys, time\n"
        "from fedcore import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['signature', '--help'], ['--version']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'numpy', 'rich', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = _python("-c", probe, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout and "usage: fedcore train" in done.stdout
    version = _python("-m", "fedcore", "--version", timeout=60)
    assert (version.returncode, version.stdout) == (0, f"fedcore {fedcore.__version__}\n")


def test_import_fedcore_is_lazy_and_its_names_match_the_static_imports():
    done = _python("-c", "import sys, fedcore; print('tensorflow' in sys.modules)", timeout=60)
    assert done.stdout.split() == ["False"], done.stderr
    # What type checkers see (the TYPE_CHECKING imports) is what the first use loads.
    tree = ast.parse((ROOT / "fedcore" / "__init__.py").read_text())
    static = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                static.setdefault(imp.module, set()).update(a.name for a in imp.names)
    assert static == {module: set(names) for module, names in fedcore._EXPORTS.items()}
    for names in fedcore._EXPORTS.values():
        for name in names:
            assert getattr(fedcore, name) is not None and name in dir(fedcore)


# --------------------------------------------------------------------------
# Help


def _help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_train_help_groups_its_options_and_says_each_default_once(capsys):
    text = _help(["train", "--help"], capsys)
    for group in ("data:", "training:", "execution:", "output:", "checkpoints and dropouts:"):
        assert f"\n{group}\n" in text
    entries, current = [], None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = [line]
            entries.append(current)
        elif current is not None and line.startswith("      "):
            current.append(line)
        else:
            current = None
    entries = {e[0].split()[0].rstrip(","): " ".join(" ".join(e).split()) for e in entries}
    assert len(entries) > 20
    for option, entry in entries.items():
        assert entry.count("default") <= 1, entry
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
    assert "(default: 20)" in entries["--num-clients"] and "(default: tensorflow)" in entries["--executor"]
    assert "default: all, at most 100" in entries["--eval-clients"]


def test_signature_of_an_iterative_process_prints_its_computations(capsys):
    assert cli.main(["signature", "tests.cli.test_conventions:counter"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tests.cli.test_conventions:counter: a IterativeProcess\n")
    assert "initialize:\n  compact:   ( -> int32@SERVER)" in out
    assert "next:\n  compact:   (int32@SERVER -> int32@SERVER)" in out


@fedcore.federated_computation
def _zero():
    return fedcore.federated_value(0, fedcore.SERVER)


@fedcore.tf_computation(fedcore.to_type("int32"))
def _add_one(x):
    return x + 1


@fedcore.federated_computation(fedcore.type_at_server(fedcore.to_type("int32")))
def _count(state):
    return fedcore.federated_apply(_add_one, state)


counter = fedcore.templates.IterativeProcess(_zero, _count)


# --------------------------------------------------------------------------
# --out, --overwrite, --config, --quiet and --verbose


def _fail(argv, capsys, code=2):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == code
    return capsys.readouterr().err


def test_out_that_holds_files_or_another_run_is_refused(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    err = _fail(["train", *QUICK, "--out", str(other)], capsys)
    assert f"argument --out: {other} is not empty (it holds notes.txt)" in err and "--overwrite" in err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("old")
    err = _fail(["train", *QUICK, "--out", str(run)], capsys)
    assert f"argument --out: {run} holds another run (checkpoints, metrics.csv)" in err
    assert f"--resume {run}" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.csv"]  # nothing written
    err = _fail(["train", "--resume", str(run), "--overwrite"], capsys)
    assert "argument --overwrite: not allowed with --resume" in err


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files_quietly(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-00000009.fckpt").write_text("an older run's")
    (run / "metrics.csv").write_text("old")
    (run / "notes.txt").write_text("mine")
    assert cli.main(["train", *QUICK, "--rounds", "1", "--out", str(run), "--overwrite", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (run / "notes.txt").read_text() == "mine"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-00000001.fckpt"]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("round,")
    log = (run / "train.log").read_text()
    assert "--overwrite" in log.splitlines()[0] and "done in" in log  # the log has what --quiet did not print


def _parse(argv):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    return cli.apply_config(parser, argv, args) if getattr(args, "config", None) else args


def test_config_file_sets_options_and_flags_override_it(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('rounds = 7\nclient-lr = 0.05\nmodel = "cnn"\nclients_per_round = 4\noverwrite = true\n')
    args = _parse(["train", "--config", str(config), "--rounds", "3"])
    assert (args.rounds, args.client_lr, args.model, args.clients_per_round, args.overwrite) == (3, 0.05, "cnn", 4,
                                                                                                True)
    assert {"rounds", "client_lr", "model", "clients_per_round"} <= args.given_options  # --resume compares them
    assert _parse(["train"]).rounds == 20  # a later command line starts from the defaults again


@pytest.mark.parametrize(
    "text, message",
    [
        ("roundz = 3\n", "unknown setting 'roundz'; the settings are the long options of fedcore train: address,"),
        ("config = 'x.toml'\n", "unknown setting 'config'"),
        ("rounds = 'three'\n", "setting 'rounds': expected a number, got the string 'three'"),
        ("rounds = 0\n", "setting 'rounds': expected a positive whole number, got 0"),
        ("rounds = 2.5\n", "setting 'rounds': expected a positive whole number, got '2.5'"),
        ("model = 'mlp'\n", "setting 'model': expected one of linear, cnn, got 'mlp'"),
        ("quiet = 1\n", "setting 'quiet': expected true or false, got 1"),
        ("rounds = 2\nrounds = 3\n", "not valid TOML"),
        ("rounds = 2\n[training]\nepochs = 1\n", "unknown setting 'training'"),
    ],
)
def test_bad_config_files_are_usage_errors_naming_the_key(tmp_path, capsys, text, message):
    config = tmp_path / "run.toml"
    config.write_text(text)
    err = _fail(["train", "--config", str(config)], capsys)
    assert f"fedcore train: error: argument --config: {config}: " in err and message in err, err
    err = _fail(["train", "--config", str(tmp_path / "missing.toml")], capsys)
    assert "cannot read it" in err


def test_a_run_writes_its_settings_log_and_a_keras_model_that_predicts_as_the_state(tmp_path, capsys):
    import keras

    from fedcore import learning

    config = tmp_path / "run.toml"
    config.write_text("rounds = 3\nseed = 4\n")
    run = tmp_path / "run"
    argv = ["train", *QUICK, "--config", str(config), "--rounds", "1", "--checkpoint-every", "1", "--verbose",
            "--out", str(run)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "traced in" in out and "done in" in out and "after round 1: train loss" in out
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["rounds"] == 1 and saved["seed"] == 4 and saved["executor"] == "reference"
    assert "out" not in saved and "verbose" not in saved and "config" not in saved
    # config.toml reproduces the run's settings.
    again = _parse(["train", "--config", str(run / "config.toml")])
    first = _parse(argv)
    for key in cli.RUN_SETTINGS + ("rounds", "checkpoint_every"):
        assert getattr(again, key) == getattr(first, key), key
    # model.keras predicts as the final state's weights do.
    model = keras.models.load_model(run / "model.keras")
    state = learning.load_checkpoint(run / "checkpoints").state
    fresh = cli.keras_model("linear")
    learning.ModelWeights(**state["model"]).assign_weights_to(fresh)  # without a template: plain dicts
    x = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    assert np.allclose(model.predict(x, verbose=0), fresh.predict(x, verbose=0), atol=1e-6)
    assert not np.allclose(model.predict(x, verbose=0), cli.keras_model("linear").predict(x, verbose=0))


def test_assign_weights_to_names_what_does_not_fit():
    import tensorflow as tf

    from fedcore import learning

    linear = cli.keras_model("linear")
    kernel = np.arange(7840, dtype=np.float32).reshape(784, 10)
    weights = learning.ModelWeights({"dense/kernel": kernel, "dense/bias": np.ones(10, np.float32)}, {})
    weights.assign_weights_to(linear)
    assert np.array_equal(linear.trainable_variables[0].numpy(), kernel)
    wrapped = learning.from_keras_model(cli.keras_model("linear"), loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                                        input_spec=cli.input_spec())
    weights.assign_weights_to(wrapped)
    assert np.array_equal(wrapped.keras_model.trainable_variables[0].numpy(), kernel)
    with pytest.raises(ValueError, match="the trainable weights do not fit the model: the model has conv2d/kernel, "
                                         "conv2d/bias, conv2d_1/kernel, conv2d_1/bias, which the weights lack$"):
        weights.assign_weights_to(cli.keras_model("cnn"))
    extra = learning.ModelWeights({**weights.trainable, "dense_1/kernel": kernel}, {})
    with pytest.raises(ValueError, match="the weights have dense_1/kernel, which the model lacks"):
        extra.assign_weights_to(linear)
    bad = learning.ModelWeights({"dense/kernel": kernel, "dense/bias": np.ones(3, np.float32)}, {})
    with pytest.raises(ValueError, match=r"the trainable weight dense/bias is float32\[3\], but the model's "
                                         r"variable is float32\[10\]"):
        bad.assign_weights_to(linear)
    assert np.array_equal(linear.trainable_variables[0].numpy(), kernel)  # nothing assigned
    with pytest.raises(TypeError, match="expected a Keras model or a fedcore.learning.Model"):
        weights.assign_weights_to(object())


# --------------------------------------------------------------------------
# Missing extras, noise


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from fedcore._dist import install_hint

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without Ray
    assert cli.main(["train", *TINY, "--executor", "ray", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fedcore train: error: --executor ray needs Ray, which is not installed")
    assert err.rstrip().endswith(f"install the ray extra: {install_hint('ray')}")
    from fedcore._dist import DIST_NAME

    assert install_hint("ray") == f"pip install '{DIST_NAME}[ray]'"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# Ctrl-C, in a pipe


def test_ctrl_c_stops_cleanly_writes_what_it_has_and_says_how_to_resume(tmp_path):
    from fedcore.learning import checkpoint as ckpt

    run = tmp_path / "run"
    argv = ["-m", "fedcore", "train", *TINY, "--rounds", "100000", "--checkpoint-every", "1000",
            "--eval-clients", "0", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    child = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None:
            if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert child.poll() is None, child.communicate(timeout=10)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "fedcore train: interrupted during round " in err or "fedcore train: interrupted after round " in err
    assert f"continue the run with: fedcore train --resume {run}" in err, (out, err)
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    done = len(rows)
    assert done >= 2, (out, err)
    # The last completed round is saved.
    assert ckpt.load_checkpoint(run / "checkpoints").round_num == done, (out, err)
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG" and (run / "model.keras").is_file(), (out, err)
    # In a pipe: plain lines, no progress bar, no terminal codes.
    assert "\x1b[" not in out and "\r" not in out, (out, err)
    lines = out.splitlines()
    assert lines[1] == "tracing the federated averaging and evaluation computations...", (out, err)
    assert lines[2].split() == ["round", "train", "loss", "train", "acc", "held-out", "acc", "seconds"], (out, err)
    assert [line.split()[0] for line in lines[3:3 + done]] == [str(r) for r in range(1, done + 1)], (out, err)
    assert "interrupted" in (run / "train.log").read_text()


def test_verbose_adds_the_traceback_of_a_failure(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "empty")]) == 1
    plain = capsys.readouterr().err
    assert plain.startswith("fedcore train: error: ") and "Traceback" not in plain
    assert cli.main(["train", "--resume", str(tmp_path / "empty"), "--verbose"]) == 1
    verbose = capsys.readouterr().err
    assert verbose.startswith("Traceback") and verbose.endswith(plain)


def test_ctrl_c_before_training_exits_130_without_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_client_data", interrupted)
    assert cli.main(["train", *QUICK, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "fedcore: interrupted\n"

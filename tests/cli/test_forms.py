"""``fedcore compile`` and ``fedcore inspect`` (fedcore.cli.forms), run in-process through fedcore.cli.main."""

import sys
import textwrap

import pytest

import fedcore
from fedcore import cli
from fedcore.compiler import forms

ROUND_MODULE = textwrap.dedent(
    """
    import tensorflow as tf
    import fedcore

    @fedcore.tf_computation(tf.float32, tf.float32)
    def scale(x, factor):
        return x * factor

    @fedcore.federated_computation(fedcore.type_at_server(tf.float32), fedcore.type_at_clients(tf.float32))
    def scaled_sum(factor, data):
        scaled = fedcore.federated_map(scale, fedcore.federated_zip((data, fedcore.federated_broadcast(factor))))
        return factor, fedcore.federated_sum(scaled)

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def just_a_mean(data):
        return fedcore.federated_mean(data)

    class HasNext:
        next = scaled_sum

    not_a_computation = 42
    """
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "round_module.py").write_text(ROUND_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("round_module", None)


@pytest.mark.parametrize("form, cls", [("mapreduce", forms.MapReduceForm),
                                       ("distribute-aggregate", forms.DistributeAggregateForm)])
def test_compile_writes_a_form_that_loads_and_runs(workdir, capsys, form, cls):
    out = workdir / "round.fedcore"
    assert cli.main(["compile", "round_module:scaled_sum", "--form", form, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{cls.__name__} of (<factor=float32@SERVER,data={{float32}}@CLIENTS> -> <float32@SERVER,float32@SERVER>)" in printed
    assert f"wrote {out}" in printed
    loaded = fedcore.deserialize(out.read_bytes())
    assert isinstance(loaded, cls)
    assert not list(workdir.glob(".round.fedcore.*"))  # no temporary file left behind

    assert cli.main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    for piece in cls.PIECES:
        assert f"\n{piece}: " in shown
    assert "TensorFlow computations:" in shown and "scale: (<x=float32,factor=float32> -> float32)" in shown


def test_compile_takes_an_iterative_process_like_object_by_its_next(workdir, capsys):
    out = workdir / "next.fedcore"
    assert cli.main(["compile", "round_module:HasNext", "--form", "mapreduce", "-o", str(out)]) == 0
    assert isinstance(fedcore.deserialize(out.read_bytes()), forms.MapReduceForm)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compile", "round_module:just_a_mean", "--form", "mapreduce", "-o", "x"],
         "cannot compile round_module:just_a_mean: cannot compile a computation of type ({float32}@CLIENTS -> float32@SERVER)"),
        (["compile", "round_module:not_a_computation", "--form", "mapreduce", "-o", "x"],
         "round_module:not_a_computation is a int, not a computation"),
        (["compile", "round_module:missing", "--form", "mapreduce", "-o", "x"], "has no attribute 'missing'"),
        (["compile", "round_module:scaled_sum", "--form", "three-phase", "-o", "x"], "invalid choice: 'three-phase'"),
        (["compile", "round_module:scaled_sum", "--form", "mapreduce", "-o", "no/such/dir/x"],
         "the directory no/such/dir does not exist"),
        (["compile", "round_module:scaled_sum", "--form", "mapreduce"], "the following arguments are required: -o/--output"),
        (["inspect", "missing.fedcore"], "cannot read missing.fedcore"),
    ],
)
def test_bad_compile_and_inspect_arguments_are_named(workdir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_inspect_refuses_a_file_that_is_not_fedcore(workdir, capsys):
    (workdir / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit):
        cli.main(["inspect", "notes.txt"])
    assert "notes.txt is not a fedcore file" in capsys.readouterr().err


def test_inspect_shows_a_plain_computation_too(workdir, capsys):
    sys.path.insert(0, str(workdir))
    import round_module

    (workdir / "comp.fedcore").write_bytes(fedcore.serialize(round_module.just_a_mean))
    assert cli.main(["inspect", "comp.fedcore"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("computation just_a_mean: ({float32}@CLIENTS -> float32@SERVER)")
    assert "federated_mean" in shown

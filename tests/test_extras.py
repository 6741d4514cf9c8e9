"""Optional dependencies: a missing one is reported with the extra that installs it."""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedcore import _extras
from fedcore._dist import DIST_NAME


def test_messages_name_the_distribution_that_setup_cfg_builds():
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    assert DIST_NAME == config["metadata"]["name"] == "fedcore-tf"  # "fedcore" on the index is another project
    assert _extras.install_hint("ray") == "pip install 'fedcore-tf[ray]'"


def test_require_returns_the_module():
    import json

    assert _extras.require("json", "cli", "a test") is json


def test_a_missing_package_names_its_extra_and_the_install_command():
    with pytest.raises(ModuleNotFoundError) as info:
        _extras.require("no_such_package_anywhere.datasets", "datasets", "the embedded handwritten digits")
    message = str(info.value)
    assert "the embedded handwritten digits needs the package 'no_such_package_anywhere'" in message
    assert f"pip install '{DIST_NAME}[datasets]'" in message
    assert info.value.name == "no_such_package_anywhere"


def test_a_module_missing_inside_an_installed_package_is_not_blamed_on_an_extra():
    # json is installed; json.no_such_module is a broken import, not a missing extra.
    with pytest.raises(ModuleNotFoundError) as info:
        _extras.require("json.no_such_module", "cli", "a test")
    assert "extra" not in str(info.value)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_without_the_datasets_extra_the_digits_and_hdf5_say_which_extra(tmp_path):
    # One process: h5py and scikit-learn hidden before fedcore is imported, so the
    # simulation package must import without them and fail only when they are used.
    (tmp_path / "f.h5").write_bytes(b"not read")
    proc = _run(
        f"""
        import sys
        sys.modules["h5py"] = None
        sys.modules["sklearn"] = None
        from fedcore import simulation
        from fedcore.simulation.datasets import digits
        for load in (digits.load_data, lambda: simulation.load_hdf5({str(tmp_path / "f.h5")!r})):
            try:
                load()
            except ModuleNotFoundError as e:
                print("ERROR", e)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 2, proc.stdout
    assert "'sklearn'" in lines[0] and f"pip install '{DIST_NAME}[datasets]'" in lines[0]
    assert "'h5py'" in lines[1] and f"pip install '{DIST_NAME}[datasets]'" in lines[1]


def test_without_tensorflow_import_fedcore_says_how_to_install_it():
    proc = _run(
        """
        import sys
        sys.modules["tensorflow"] = None  # as if no TensorFlow were installed
        import fedcore  # cheap: the public names load on first use
        try:
            fedcore.federated_computation
        except ModuleNotFoundError as e:
            print("ERROR", e)
        """
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pip install '{DIST_NAME}[cpu]'" in proc.stdout and f"'{DIST_NAME}[gpu]'" in proc.stdout, proc.stdout

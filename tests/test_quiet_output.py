"""The main job and ``import fedcore`` print no TensorFlow noise: no CUDA probing, no retracing warnings.

On a machine without a GPU, the CUDA build of TensorFlow logs at every start that it found
no CUDA driver, and an ``E`` line ("failed call to cuInit") that is not an error; part of it
is logged before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so no setting hides it. The
CPU-only build (``pip install 'fedcore-tf[cpu]'``, which ``scripts/_setup.sh`` installs
where no GPU is seen) does not probe. These tests run the main job as ``scripts/main.sh``
runs it, and a plain ``import fedcore`` with no logging settings, in subprocesses, and read
their stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lines that are TensorFlow's noise rather than anything a user can act on.
NOISE = [
    re.compile(p)
    for p in (
        r"cudart_stub",
        r"Could not find cuda drivers",
        r"cuInit",
        r"cuda_(platform|executor|diagnostics|dnn|blas|fft)\.cc",
        r"Unable to register cu(BLAS|DNN|FFT) factory",
        r"TF-TRT Warning",
        r"Could not find TensorRT",
        r"triggered tf\.function retracing",
        r"^E\d{4} ",  # any error line of TensorFlow's C++ logging
    )
]

HINT = (
    "TensorFlow printed noise to stderr. If these are CUDA lines on a machine without a GPU, the CUDA "
    "build of TensorFlow is installed: install the CPU-only build instead (pip uninstall tensorflow && "
    "pip install 'fedcore-tf[cpu]'; scripts/_setup.sh does this for its .venv)."
)


def _noise(stderr: str) -> list:
    return [line for line in stderr.splitlines() if any(p.search(line) for p in NOISE)]


def _env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    env.update(settings)
    return env


def test_the_main_job_prints_no_tensorflow_noise(tmp_path):
    # scripts/main.sh: `python -m fedcore.cli train` with TF_CPP_MIN_LOG_LEVEL=2 (from _setup.sh), here tiny.
    proc = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "train", "--rounds", "2", "--num-clients", "4",
         "--clients-per-round", "2", "--epochs", "1", "--checkpoint-every", "0", "--out", str(tmp_path / "run")],
        cwd=ROOT, env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _noise(proc.stderr), f"{HINT}\n" + "\n".join(_noise(proc.stderr))


def test_fedcore_train_with_no_logging_settings_writes_nothing_to_stderr(tmp_path):
    # The command sets TensorFlow's C++ log level itself (where the user set none): not even the
    # oneDNN notice is printed, and stderr stays for errors.
    proc = subprocess.run(
        [sys.executable, "-m", "fedcore", "train", "--rounds", "1", "--num-clients", "4",
         "--clients-per-round", "2", "--epochs", "1", "--checkpoint-every", "0", "--out", str(tmp_path / "run")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]


def test_import_fedcore_and_a_first_computation_print_no_cuda_probing():
    # No logging settings at all, as in a user's own script.
    code = (
        "import tensorflow as tf, fedcore\n"
        "@fedcore.federated_computation(fedcore.type_at_clients(tf.float32))\n"
        "def mean(x):\n"
        "    return fedcore.federated_mean(x)\n"
        "for n in range(1, 8):\n"  # new shapes each call: no retracing warning either
        "    print(mean([float(i) for i in range(n)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"]
    assert not _noise(proc.stderr), f"{HINT}\n" + "\n".join(_noise(proc.stderr))

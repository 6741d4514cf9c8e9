"""Fuzzing the loader: structure-aware mutants with valid checksums, loaded and called in a child process.

The mutants (tests/compiler/serialization_fuzz.py) are written to a temporary
directory, and one child process (tests/compiler/serialization_fuzz_driver.py)
loads and calls each of them there.  Asserted: the child is not killed (no
signal, no crash), no mutant escapes with anything but a SerializationError on
load (or, on call, the errors a call may raise), no file appears in the
directory, and nothing the attack graphs print reaches the output.

``FEDCORE_FUZZ_COUNT`` and ``FEDCORE_FUZZ_SEED`` run a larger or another campaign.
"""

import json
import os
import pathlib
import subprocess
import sys

from tests.compiler import serialization_attacks as attacks
from tests.compiler import serialization_fuzz

ROOT = pathlib.Path(__file__).resolve().parents[2]
COUNT = int(os.environ.get("FEDCORE_FUZZ_COUNT", "240"))
SEED = int(os.environ.get("FEDCORE_FUZZ_SEED", "20261202"))


def test_mutated_files_are_refused_or_run_safely(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.txt").write_text("hidden")
    described = {}
    for name, description, data in serialization_fuzz.mutants(str(work), COUNT, SEED):
        (work / f"{name}.fedcore").write_bytes(data)
        described[f"{name}.fedcore"] = description
    before = sorted(os.listdir(work))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "tests.compiler.serialization_fuzz_driver", str(work)],
            cwd=work, env=env, capture_output=True, text=True, timeout=600,
        )
        stdout, stderr, returncode = child.stdout, child.stderr, child.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr, returncode = "", "timeout"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    started = [line["start"] for line in lines if "start" in line]
    last = started[-1] if started else None
    assert returncode == 0, (
        f"the child process ended with {returncode} while loading {last} ({described.get(last)}):\n{stderr[-3000:]}"
    )
    results = [line for line in lines if "outcome" in line]
    assert len(results) == COUNT and lines[-1] == {"done": COUNT}
    unexpected = [(r["name"], described[r["name"]], r) for r in results if r["outcome"] == "unexpected"]
    assert not unexpected, unexpected[:5]
    assert sorted(os.listdir(work)) == before
    assert attacks.PRINT_MARKER not in stdout + stderr
    outcomes = {r["outcome"] for r in results}
    # The mutants reach past the checks too: some load and run.
    assert {"refused", "ran"} <= outcomes, outcomes

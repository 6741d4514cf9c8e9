"""``fedcore train`` killed with SIGKILL at random points, then resumed, ends with the uninterrupted run's model.

The uninterrupted run and the interrupted one use the same seed.  The
interrupted run is killed twice (once while training from scratch, once
while resumed), each time at a random moment (a random round, then a random
fraction of a round);
after each kill every checkpoint file must load (none is half written).
The final model must be bit for bit the uninterrupted run's, and so must
every metric except the seconds per round.
"""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedcore.learning import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
# Rounds take tens of milliseconds: enough of them that a kill, which lands a moment after the round it waits
# for, still lands before the run ends, even on a loaded machine.
ROUNDS = 80
ARGS = ["--num-clients", "10", "--clients-per-round", "4", "--rounds", str(ROUNDS), "--epochs", "1",
        "--eval-clients", "4", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--seed", "7"]


def fedcore_train(*argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "fedcore.cli", "train", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def kill_at_random_point(proc, directory, rng, done_before, last=ROUNDS * 2 // 3):
    """SIGKILLs ``proc`` at a random moment between rounds ``done_before`` and ``last``.

    It waits for the checkpoint of a randomly drawn round, then a random
    fraction of a round, and kills.  Returns the round of the latest checkpoint left.
    """
    target = rng.randint(done_before + 1, max(done_before + 1, last))
    deadline = time.monotonic() + 120
    while True:
        latest = ckpt.latest_checkpoint(directory)
        if latest is not None and int(latest.stem.split("-")[1]) >= target:
            break
        assert proc.poll() is None, f"fedcore train ended before round {target}: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.02))  # about a round
    assert proc.poll() is None, "the run finished before it could be killed; the test needs more rounds"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return check_all_checkpoints_load(directory)


def check_all_checkpoints_load(directory):
    found = ckpt.list_checkpoints(directory)
    assert found
    for path in found:
        loaded = ckpt.load_checkpoint(path)  # raises on a partial or damaged file
        assert loaded.round_num == int(path.stem.split("-")[1]) and len(loaded.extra["rows"]) == loaded.round_num
    return ckpt.load_checkpoint(found[-1]).round_num


def without_seconds(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_killed_twice_and_resumed_ends_with_the_uninterrupted_model(tmp_path):
    seed = int(os.environ.get("FEDCORE_TEST_SEED", random.randrange(1 << 30)))
    print(f"FEDCORE_TEST_SEED={seed}")
    rng = random.Random(seed)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    reference = fedcore_train(*ARGS, "--out", str(straight))
    finish(reference)

    # The first kill leaves room for a second: the run may finish a few more rounds before the kill lands.
    first = kill_at_random_point(fedcore_train(*ARGS, "--out", str(interrupted)), interrupted / "checkpoints", rng, 0,
                                 last=ROUNDS // 3)
    second = kill_at_random_point(fedcore_train("--resume", str(interrupted)), interrupted / "checkpoints", rng, first)
    print(f"killed after the checkpoints of rounds {first} and {second} of {ROUNDS}")
    assert 0 < first < second < ROUNDS
    finish(fedcore_train("--resume", str(interrupted)))

    a = ckpt.load_checkpoint(straight / "checkpoints")
    b = ckpt.load_checkpoint(interrupted / "checkpoints")
    assert a.round_num == b.round_num == ROUNDS
    leaves_a, leaves_b = ckpt._nest.flatten(a.state), ckpt._nest.flatten(b.state)
    assert len(leaves_a) == len(leaves_b) == 3  # kernel, bias, server optimizer step
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "the resumed run's model differs from the uninterrupted run's"
    assert int(b.state["optimizer_state"][0]) == ROUNDS
    rows_a, rows_b = without_seconds(straight / "metrics.csv"), without_seconds(interrupted / "metrics.csv")
    assert [int(r["round"]) for r in rows_b] == list(range(1, ROUNDS + 1))
    assert rows_a == rows_b


def test_the_long_run_script_samples_rss_and_reports_growth(tmp_path):
    """A 20-round version of benchmarks/long_run.py (the 500-round run is done by hand, see docs/reliability.md)."""
    import json

    report = tmp_path / "long_run.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/long_run.py", "--rounds", "20", "--every", "5", "--max-growth", "100",
         "--json", str(report), "--eval-clients", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert [r for r, _ in result["samples"]] == [5, 10, 15, 20]
    rss = [m for _, m in result["samples"]]
    assert all(100 < m < 20_000 for m in rss)
    assert result["growth_percent"] == max(100 * (m - rss[0]) / rss[0] for m in rss[1:])
    assert "largest growth after warm-up (round 5)" in proc.stdout and "| 20 |" in proc.stdout
    # Too few rounds to measure a growth is an argument error.
    bad = subprocess.run([sys.executable, "benchmarks/long_run.py", "--rounds", "4", "--every", "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be at least twice --every" in bad.stderr

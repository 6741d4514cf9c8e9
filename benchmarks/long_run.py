"""Long run: ``fedcore train`` for 500 rounds, with the resident memory (RSS) sampled every 50 rounds.

Runs the demo exactly as ``fedcore train`` does (linear model on the
embedded digits, 20 clients, 10 per round, held-out evaluation, metrics.csv,
TensorBoard scalars and a checkpoint every 5 rounds), in this process, and
reads this process's RSS from /proc/self/statm after every 50th round (when
the round's metrics row is written).  The first sample is the warm-up
baseline; the growth is the largest later sample over it.  Exits 1 when the
growth exceeds --max-growth percent.

    .venv/bin/python benchmarks/long_run.py                # 500 rounds, about 1-3 minutes on 2 cores
    .venv/bin/python benchmarks/long_run.py --rounds 20 --every 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux: /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError as e:
        raise SystemExit(f"long_run.py: cannot read /proc/self/statm ({e}); this script measures RSS on Linux") from None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(rounds: int, every: int, out: Path, extra: Sequence[str] = ()) -> Tuple[List[Tuple[int, float]], float]:
    """Trains ``rounds`` rounds with ``fedcore train``; returns [(round, RSS MiB)] every ``every`` rounds, and seconds."""
    from fedcore import cli

    samples: List[Tuple[int, float]] = []
    write_csv = cli.write_csv

    def write_and_sample(path, rows):
        write_csv(path, rows)
        if rows and rows[-1]["round"] % every == 0:
            samples.append((rows[-1]["round"], rss_mib()))

    cli.write_csv = write_and_sample  # called once per round, after the round's work
    started = time.perf_counter()
    try:
        status = cli.main(["train", "--rounds", str(rounds), "--out", str(out), *extra])
    finally:
        cli.write_csv = write_csv
    if status != 0:
        raise SystemExit(f"long_run.py: fedcore train exited with {status}")
    return samples, time.perf_counter() - started


def growth_percent(samples: Sequence[Tuple[int, float]]) -> float:
    """The largest sample after the first, relative to the first (the warm-up baseline), in percent."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 RSS samples to measure growth, got {len(samples)}")
    base = samples[0][1]
    return 100.0 * (max(rss for _, rss in samples[1:]) - base) / base


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="sample RSS after every this many rounds")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent RSS growth allowed after warm-up")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples and growth here")
    args, extra = parser.parse_known_args(argv)
    if args.rounds < 2 * args.every or args.every < 1:
        parser.error(f"--rounds ({args.rounds}) must be at least twice --every ({args.every}), which must be >= 1")
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        samples, seconds = run(args.rounds, args.every, out, extra)
    growth = growth_percent(samples)
    print(f"\n{args.rounds} rounds in {seconds:.1f}s; RSS after every {args.every} rounds:")
    print("| round | RSS (MiB) | vs. round %d |" % samples[0][0])
    print("|---:|---:|---:|")
    for r, rss in samples:
        print(f"| {r} | {rss:.1f} | {100 * (rss - samples[0][1]) / samples[0][1]:+.2f}% |")
    verdict = "ok" if growth <= args.max_growth else "TOO MUCH"
    print(f"largest growth after warm-up (round {samples[0][0]}): {growth:+.2f}% (limit {args.max_growth:+.1f}%): {verdict}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": args.rounds, "seconds": seconds, "samples": samples,
                                         "growth_percent": growth}, indent=1))
    return 0 if growth <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``fedcore`` argument parser and the parsers of its argument types."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

from fedcore.cli import forms
from fedcore.cli.models import MODELS

EXECUTORS = ("reference", "tensorflow", "ray")
# The largest number of test clients evaluated each round (a fixed, seeded sample when there are more).
MAX_EVAL_CLIENTS = 100


def _whole_number(minimum: int, expected: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _whole_number(1, "a positive whole number")
_non_negative_int = _whole_number(0, "a whole number >= 0")


def _seed(text: str) -> int:
    # Keras and numpy's legacy seeding take seeds below 2**32 only.
    value = _non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**32 - 1}, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is not a directory; give the directory that holds fed_emnist_digitsonly_train.h5 "
            "and fed_emnist_digitsonly_test.h5"
        )
    return path


def _run_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory; give the --out directory of an earlier run")
    return path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


class _StoreGiven(argparse.Action):
    """argparse's "store", which also records the option in ``args.given_options``: ``--resume`` needs to
    know which settings were given on the command line, even when one was given its default value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_options = frozenset(getattr(namespace, "given_options", frozenset()) | {self.dest})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcore", description="Typed federated computations: train a model, or inspect a computation."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_train(commands)
    signature = commands.add_parser(
        "signature",
        help="print a computation's type signature",
        description="Imports MODULE, looks up ATTR and prints its type signature, compact and formatted.",
    )
    signature.add_argument("target", metavar="MODULE:ATTR", help="e.g. mypackage.algorithms:next_round")
    forms.add_commands(commands)
    return parser


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model with federated averaging and record its metrics",
        description=(
            "Trains a model with federated averaging on simulated clients: the embedded handwritten digits "
            "by default, or Federated EMNIST with --emnist. Writes metrics.csv, TensorBoard scalars and "
            "metrics.png into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name in (None, "store"):  # argparse looks the default action up as None
        train.register("action", name, _StoreGiven)  # every option below records that it was given
    train.set_defaults(given_options=frozenset())
    data = train.add_argument_group("data")
    data.add_argument(
        "--emnist", type=_existing_dir, metavar="DIR", default=None,
        help="train on Federated EMNIST digits read from this directory (fed_emnist_digitsonly_{train,test}.h5) "
        "instead of the embedded digits",
    )
    data.add_argument("--num-clients", type=_positive_int, default=20,
                      help="clients the embedded digits are split among (ignored with --emnist)")
    run = train.add_argument_group("training")
    run.add_argument("--model", choices=MODELS, default="linear", help="linear: softmax regression; cnn: small CNN")
    run.add_argument("--rounds", type=_positive_int, default=20, help="federated rounds")
    run.add_argument("--clients-per-round", type=_positive_int, default=10, help="clients sampled each round")
    run.add_argument("--epochs", type=_positive_int, default=2, help="passes over its data per client per round")
    run.add_argument("--batch-size", type=_positive_int, default=20, help="client batch size")
    run.add_argument("--client-lr", type=_positive_float, default=0.1, help="client SGD learning rate")
    run.add_argument("--server-lr", type=_positive_float, default=1.0, help="server SGD learning rate")
    run.add_argument("--executor", choices=EXECUTORS, default="tensorflow", help="what runs the computations")
    run.add_argument("--address", default=None, metavar="ADDR",
                     help="with --executor ray: the Ray cluster to join (host:port, or 'auto' for the one "
                     "running here); default: start a local Ray. A host:port where nothing listens is an error "
                     "within 10 s")
    run.add_argument("--eval-clients", type=_non_negative_int, default=None,
                     help=f"test clients evaluated each round (default: all, at most {MAX_EVAL_CLIENTS}); 0 skips")
    run.add_argument("--seed", type=_seed, default=0, help="seed for data, sampling and model")
    run.add_argument("--out", type=Path, default=None,
                     help="output directory (default: ./fedcore-runs/<timestamp>)")
    reliability = train.add_argument_group("checkpoints and dropouts")
    reliability.add_argument("--checkpoint-every", type=_non_negative_int, default=5, metavar="N",
                             help="save the server state into OUT/checkpoints every N rounds and after the last; "
                             "0: no checkpoints")
    reliability.add_argument("--keep-checkpoints", type=_positive_int, default=3, metavar="K",
                             help="how many of the most recent checkpoints to keep")
    reliability.add_argument("--resume", type=_run_dir, default=None, metavar="DIR",
                             help="continue the run in DIR (an earlier --out) from its latest checkpoint, with its "
                             "settings (a setting given here that differs from the saved one is an error, even at "
                             "its default value); --rounds N trains it to N rounds in all")
    reliability.add_argument("--min-clients", type=_positive_int, default=1,
                             help="a round whose surviving clients are fewer than this fails (clients whose work "
                             "raises are dropped from the round)")
    reliability.add_argument("--max-dropped-fraction", type=_fraction, default=0.5, metavar="F",
                             help="a round in which more than this fraction of its clients fail, fails")

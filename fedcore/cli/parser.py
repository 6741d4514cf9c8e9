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


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help, once: not when the help already says its default, nor for
    options without one (None) or flags."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" in text
            or "default:" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or isinstance(action.default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from fedcore import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcore", description="Typed federated computations: train a model, or inspect a computation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    parser.train_parser = _add_train(commands)
    signature = commands.add_parser(
        "signature",
        help="print a computation's type signature",
        description="Imports MODULE, looks up ATTR (a computation, a type, or an IterativeProcess, whose "
        "initialize and next are printed) and prints its type signature, compact and formatted.",
    )
    signature.add_argument("target", metavar="MODULE:ATTR", help="e.g. mypackage.algorithms:next_round")
    forms.add_commands(commands)
    return parser


def _add_train(commands) -> argparse.ArgumentParser:
    train = commands.add_parser(
        "train",
        help="train a model with federated averaging and record its metrics",
        description=(
            "Trains a model with federated averaging on simulated clients: the embedded handwritten digits "
            "by default, or Federated EMNIST with --emnist. Writes into --out: metrics.csv, metrics.png, "
            "TensorBoard scalars, the trained model (model.keras), the run's settings (config.toml, which "
            "--config reads) and a log (train.log)."
        ),
        formatter_class=_HelpFormatter,
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
                      metavar="N", help="clients the embedded digits are split among (ignored with --emnist)")
    run = train.add_argument_group("training")
    run.add_argument("--model", choices=MODELS, default="linear", help="linear: softmax regression; cnn: small CNN")
    run.add_argument("--rounds", type=_positive_int, default=20, metavar="N", help="federated rounds")
    run.add_argument("--clients-per-round", type=_positive_int, default=10, metavar="N", help="clients sampled each round")
    run.add_argument("--epochs", type=_positive_int, default=2, metavar="N", help="passes over its data per client per round")
    run.add_argument("--batch-size", type=_positive_int, default=20, metavar="N", help="client batch size")
    run.add_argument("--client-lr", type=_positive_float, default=0.1, metavar="LR", help="client SGD learning rate")
    run.add_argument("--server-lr", type=_positive_float, default=1.0, metavar="LR", help="server SGD learning rate")
    run.add_argument("--seed", type=_seed, default=0, metavar="N", help="seed for data, sampling and model")
    run.add_argument("--eval-clients", type=_non_negative_int, default=None,
                     metavar="N", help=f"test clients evaluated each round (default: all, at most {MAX_EVAL_CLIENTS}); 0 skips")
    execution = train.add_argument_group("execution")
    execution.add_argument("--executor", choices=EXECUTORS, default="tensorflow", help="what runs the computations")
    execution.add_argument("--address", default=None, metavar="ADDR",
                           help="with --executor ray: the Ray cluster to join (host:port, or 'auto' for the one "
                           "running here); default: start a local Ray. A host:port where nothing listens is an "
                           "error within 10 s")
    output = train.add_argument_group("output")
    output.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output directory, new or empty (default: ./fedcore-runs/<timestamp>)")
    output.add_argument("--overwrite", action="store_true",
                        help="let --out name a directory that is not empty: the outputs of an earlier run there "
                        "are deleted first, other files are left alone")
    output.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="read settings from a TOML file (keys are the long options: rounds = 5, "
                        "client-lr = 0.05); options given here override it. A run's config.toml reproduces it")
    verbosity = output.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    verbosity.add_argument("-v", "--verbose", action="store_true",
                           help="print more: timings, TensorFlow's warnings, and a traceback on failure")
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
                             metavar="N", help="a round whose surviving clients are fewer than this fails (clients whose work "
                             "raises are dropped from the round)")
    reliability.add_argument("--max-dropped-fraction", type=_fraction, default=0.5, metavar="F",
                             help="a round in which more than this fraction of its clients fail, fails")
    return train


# Options of ``fedcore train`` that a --config file may not set, and those that config.toml leaves out.
_NOT_IN_CONFIG = ("config",)
_NOT_SAVED = ("config", "out", "overwrite", "resume", "quiet", "verbose")


def _train_options(train: argparse.ArgumentParser) -> dict:
    """dest -> action for the long options of ``fedcore train``."""
    return {a.dest: a for a in train._actions if a.option_strings and a.dest != "help"}


def apply_config(parser: argparse.ArgumentParser, argv, args: argparse.Namespace) -> argparse.Namespace:
    """For ``fedcore train --config FILE``: parses ``argv`` again with FILE's settings as the defaults.

    FILE is TOML whose keys are the long options of ``fedcore train`` (``client-lr`` or
    ``client_lr``); each value is checked as the option's own argument would be.  An unknown key, a
    value of the wrong kind or a file that is not TOML is a usage error naming it.  The settings from
    FILE count as given (``--resume`` compares them with the run's).
    """
    import tomllib

    train = parser.train_parser
    path = args.config

    def refuse(message: str):
        train.error(f"argument --config: {path}: {message}")

    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        refuse(f"cannot read it: {e.strerror or e}")
    except tomllib.TOMLDecodeError as e:
        refuse(f"not valid TOML: {e}")
    options = _train_options(train)
    settings = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        action = options.get(dest)
        if action is None or dest in _NOT_IN_CONFIG:
            known = ", ".join(sorted(d.replace("_", "-") for d in options if d not in _NOT_IN_CONFIG))
            refuse(f"unknown setting {key!r}; the settings are the long options of fedcore train: {known}")
        if dest in settings:
            refuse(f"setting {key!r} is given twice")
        settings[dest] = _config_value(action, key, value, refuse)
    train.set_defaults(**settings)
    new_args = parser.parse_args(argv)
    new_args.given_options = frozenset(new_args.given_options | settings.keys())
    return new_args


def _config_value(action: argparse.Action, key: str, value, refuse):
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            refuse(f"setting {key!r}: expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or isinstance(value, (dict, list)) or not isinstance(value, (str, int, float)):
        refuse(f"setting {key!r}: expected a {'string' if action.type in (None, Path) else 'number'}, got {value!r}")
    if action.type in (None, Path) and not isinstance(value, str):
        refuse(f"setting {key!r}: expected a string, got {value!r}")
    if action.type not in (None, Path) and isinstance(value, str):
        refuse(f"setting {key!r}: expected a number, got the string {value!r}")
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except argparse.ArgumentTypeError as e:
        refuse(f"setting {key!r}: {e}")
    if action.choices is not None and converted not in action.choices:
        refuse(f"setting {key!r}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def config_toml(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The settings of ``args`` as a TOML file that ``--config`` reads back."""
    import json

    lines = ["# The settings of this run of fedcore train; `fedcore train --config config.toml` reproduces it."]
    for dest, action in _train_options(parser.train_parser).items():
        if dest in _NOT_SAVED:
            continue
        value = getattr(args, dest, None)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a TOML basic string
        lines.append(f"{dest.replace('_', '-')} = {text}")
    return "\n".join(lines) + "\n"

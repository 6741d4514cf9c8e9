"""The ``fedcore`` command: ``fedcore train`` runs federated averaging; ``fedcore signature`` prints a type signature;
``fedcore compile`` and ``fedcore inspect`` write and read deployment forms (see fedcore.compiler.commands).

``fedcore train`` trains a model with federated averaging on the embedded
digits data set (or Federated EMNIST with ``--emnist DIR``), shows a progress
bar and one row per round, and writes into ``--out``: ``metrics.csv``,
TensorBoard scalars under ``tensorboard/`` and ``metrics.png``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import importlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedcore.compiler import commands as compiler_commands  # noqa: E402

CSV_COLUMNS = (
    "round", "train_loss", "train_accuracy", "heldout_loss", "heldout_accuracy", "seconds",
    "clients_dropped", "nonfinite_updates",
)
MODELS = ("linear", "cnn")
EXECUTORS = ("reference", "tensorflow", "ray")
# The largest number of test clients evaluated each round (a fixed, seeded sample when there are more).
MAX_EVAL_CLIENTS = 100


# --------------------------------------------------------------------------
# Arguments.


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedcore", description="Typed federated computations: train a model, or inspect a computation."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

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
                     "running here); default: start a local Ray")
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
                             "settings; --rounds N trains it to N rounds in all")
    reliability.add_argument("--min-clients", type=_positive_int, default=1,
                             help="a round whose surviving clients are fewer than this fails (clients whose work "
                             "raises are dropped from the round)")
    reliability.add_argument("--max-dropped-fraction", type=_fraction, default=0.5, metavar="F",
                             help="a round in which more than this fraction of its clients fail, fails")

    signature = commands.add_parser(
        "signature",
        help="print a computation's type signature",
        description="Imports MODULE, looks up ATTR and prints its type signature, compact and formatted.",
    )
    signature.add_argument("target", metavar="MODULE:ATTR", help="e.g. mypackage.algorithms:next_round")
    compiler_commands.add_commands(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "signature":
        return signature_command(args, parser)
    if args.command == "compile":
        return compiler_commands.compile_command(args, parser, resolve_target)
    if args.command == "inspect":
        return compiler_commands.inspect_command(args, parser)
    return train_command(args, parser)


# --------------------------------------------------------------------------
# fedcore signature


def resolve_target(target: str) -> Any:
    """``MODULE:ATTR`` -> the object; ATTR may be dotted.  Raises ValueError with what went wrong."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, such as mypackage.algorithms:next_round, got {target!r}")
    if module_name.startswith("."):
        raise ValueError(f"cannot import module {module_name!r}: give an absolute module name, not a relative one")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules in the current directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r}: {e}") from None
    where = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{where} has no attribute {part!r}") from None
        where = f"{where}.{part}"
    return obj


def signature_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedcore.types import Type

    try:
        obj = resolve_target(args.target)
    except ValueError as e:
        parser.error(f"argument MODULE:ATTR: {e}")
    signature = obj if isinstance(obj, Type) else getattr(obj, "type_signature", None)
    if not isinstance(signature, Type):
        parser.error(
            f"argument MODULE:ATTR: {args.target} is a {type(obj).__name__}, not a computation; it has no "
            "type signature (decorate it with @fedcore.federated_computation or @fedcore.tf_computation)"
        )
    print(f"{args.target}")
    print(f"compact:   {signature.compact()}")
    print("formatted:")
    for line in signature.formatted().splitlines():
        print(f"  {line}")
    return 0


# --------------------------------------------------------------------------
# fedcore train: data and models.


def preprocess(batch_size: int, epochs: int) -> Callable:
    """EMNIST-style elements -> batches ``<x=float32[?,784],y=int32[?,1]>``, repeated ``epochs`` times.

    ``x`` is the ink, ``1 - pixels``: 0.0 for background.  A blank background
    keeps plain SGD on a linear model well conditioned, where EMNIST's 1.0
    background would add a large constant to every input.
    """
    import tensorflow as tf

    def to_example(e):
        return collections.OrderedDict(x=1.0 - tf.reshape(e["pixels"], [784]), y=tf.reshape(e["label"], [1]))

    def to_batches(dataset):
        # Element-wise work before batch(): the TF executor then keeps the examples on the
        # device and steps all clients' full batches together.
        return dataset.repeat(epochs).map(to_example).batch(batch_size)

    return to_batches


def input_spec():
    import tensorflow as tf

    return collections.OrderedDict(
        x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None, 1], tf.int32)
    )


def keras_model(name: str, num_classes: int = 10):
    import tensorflow as tf

    layers = tf.keras.layers
    if name == "linear":
        return tf.keras.Sequential(
            [layers.Input(shape=(784,)), layers.Dense(num_classes, kernel_initializer="zeros"), layers.Softmax()]
        )
    if name == "cnn":
        return tf.keras.Sequential(
            [
                layers.Input(shape=(784,)),
                layers.Reshape((28, 28, 1)),
                layers.Conv2D(8, 5, strides=2, activation="relu"),
                layers.Conv2D(16, 3, strides=2, activation="relu"),
                layers.Flatten(),
                layers.Dense(num_classes),
                layers.Softmax(),
            ]
        )
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def check_data_matches_model(data_type: Any, model_input_spec: Any) -> None:
    """Raises TypeError, showing both types in the notation, when batches of ``data_type`` can't feed the model."""
    from fedcore.types import to_type

    data_type = to_type(data_type)
    expected = to_type(model_input_spec)
    if not expected.is_assignable_from(data_type):
        raise DataModelMismatch(
            "the training data does not match the model's input_spec:\n"
            f"  model input_spec: {expected}\n"
            f"  data batches:     {data_type}"
        )


def load_client_data(args: argparse.Namespace):
    from fedcore.simulation.datasets import digits, emnist

    if args.emnist is not None:
        train, test = emnist.load_data(only_digits=True, path=args.emnist)
        return train, test, f"Federated EMNIST digits from {args.emnist}"
    train, test = digits.load_data(num_clients=args.num_clients, seed=args.seed)
    return train, test, f"embedded digits, {args.num_clients} clients"


# --------------------------------------------------------------------------
# fedcore train: reading metrics.


def _items(value: Any):
    if isinstance(value, Mapping):
        return list(value.items())
    if hasattr(value, "_asdict"):
        return list(value._asdict().items())
    if hasattr(value, "items") and callable(value.items):
        try:
            return [(k, v) for k, v in value.items() if k is not None]
        except TypeError:
            return []
    try:
        import attrs

        if attrs.has(type(value)):
            return [(f.name, getattr(value, f.name)) for f in attrs.fields(type(value))]
    except ImportError:  # pragma: no cover
        pass
    return []


def find_metric(metrics: Any, names: Sequence[str], prefer: Sequence[str] = ()) -> Optional[float]:
    """The first scalar named one of ``names`` in a nested metrics structure (sections in ``prefer`` first)."""
    items = _items(metrics)
    for name in names:
        for key, value in items:
            if key == name and not _items(value):
                try:
                    return float(value)
                except (TypeError, ValueError):
                    pass
    ordered = sorted(items, key=lambda kv: 0 if kv[0] in prefer else 1)
    for _, value in ordered:
        if _items(value):
            found = find_metric(value, names, prefer)
            if found is not None:
                return found
    return None


LOSS_NAMES = ("loss",)
ACCURACY_NAMES = ("sparse_categorical_accuracy", "accuracy")


# --------------------------------------------------------------------------
# fedcore train: outputs.


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def plot_metrics(path: Path, rows: List[Dict[str, Any]], title: str = "") -> None:
    """Loss and accuracy against rounds, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    marker = "o" if len(rows) <= 30 else None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    series = (
        (loss_ax, "train_loss", "train (clients of the round)", "tab:blue", "-"),
        (loss_ax, "heldout_loss", "held-out test clients", "tab:orange", "--"),
        (acc_ax, "train_accuracy", "train (clients of the round)", "tab:blue", "-"),
        (acc_ax, "heldout_accuracy", "held-out test clients", "tab:orange", "--"),
    )
    for ax, key, label, color, style in series:
        points = [(x, r[key]) for x, r in zip(rounds, rows) if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, linestyle=style, marker=marker, markersize=4, linewidth=2, color=color, label=label)
    loss_ax.set_title("Loss")
    loss_ax.set_ylabel("loss (cross-entropy)")
    acc_ax.set_title("Accuracy")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0.0, 1.0)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class TensorBoardLog:
    """Scalars per round under ``directory``: train/loss, train/accuracy, heldout/loss, heldout/accuracy, seconds.

    Written with TensorFlow's own summary ops and the metadata that marks a
    summary as a scalar, so the ``tensorboard`` package is needed only to view them.
    """

    TAGS = {
        "train_loss": "train/loss",
        "train_accuracy": "train/accuracy",
        "heldout_loss": "heldout/loss",
        "heldout_accuracy": "heldout/accuracy",
        "seconds": "seconds_per_round",
    }

    def __init__(self, directory: Path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(directory))
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )

    def write(self, row: Dict[str, Any]) -> None:
        tf = self._tf
        with self._writer.as_default():
            for key, tag in self.TAGS.items():
                if row.get(key) is not None:
                    tf.summary.write(
                        tag, tf.constant(row[key], tf.float32), step=row["round"], metadata=self._metadata
                    )
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------
# fedcore train


def train_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    from fedcore.simulation import DatasetDownloadError, DatasetFileError

    console = Console(highlight=False, soft_wrap=True)
    from fedcore.learning.checkpoint import CheckpointError

    try:
        return _train(args, parser, console)
    except (DataModelMismatch, DatasetFileError, DatasetDownloadError, FileNotFoundError, CheckpointError,
            RoundError) as e:
        print(f"fedcore train: error: {e}", file=sys.stderr)
        return 1


class DataModelMismatch(TypeError):
    """The training data's batches do not fit the model's input_spec; raised before any training."""


class RoundError(RuntimeError):
    """A round failed (too many clients dropped); the message says which round and where the state was saved."""


# Settings that decide a run's results: saved in its checkpoints, and taken from them on --resume.
RUN_SETTINGS = ("model", "emnist", "num_clients", "clients_per_round", "epochs", "batch_size", "client_lr",
                "server_lr", "executor", "eval_clients", "seed")


def run_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The RUN_SETTINGS of ``args`` as JSON data."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in ((k, getattr(args, k)) for k in RUN_SETTINGS)}


def checkpoint_extra(args: argparse.Namespace, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What a checkpoint holds besides the state: the settings, the metric rows so far and the sampling scheme.

    Client sampling is a pure function of (seed, round) (``simulation.sample_clients``),
    the held-out sample a pure function of the seed, and the data pipeline has
    no shuffle, so the seed and the round number are the whole random state.
    """
    return {
        "settings": run_settings(args),
        "total_rounds": args.rounds,
        "rows": rows,
        "sampling": {"seed": args.seed, "clients_per_round": args.clients_per_round,
                     "scheme": "numpy default_rng(SeedSequence([seed, round]))"},
    }


def resume_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[Path]:
    """For ``--resume DIR``: finds DIR's latest checkpoint and takes the run's settings from it.

    Returns the checkpoint's path (None without --resume).  A setting given on
    the command line that contradicts the saved one is an argument error;
    ``--rounds`` may raise the run's total number of rounds.
    """
    if args.resume is None:
        return None
    from fedcore.learning.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

    if args.out is not None:
        parser.error("argument --out: not allowed with --resume, which goes on writing into the run's directory")
    directory = args.resume / "checkpoints"
    path = latest_checkpoint(directory)
    if path is None:
        raise CheckpointError(
            f"{args.resume} holds no checkpoint to resume from (no checkpoint-NNNNNNNN.fckpt in {directory}); "
            "--resume takes the --out directory of a run trained with --checkpoint-every N > 0"
        )
    saved = load_checkpoint(path)  # checks the file now; the state is read again once the process is built
    settings = saved.extra.get("settings") if isinstance(saved.extra, dict) else None
    if not isinstance(settings, dict) or set(RUN_SETTINGS) - set(settings) or "total_rounds" not in saved.extra:
        raise CheckpointError(f"{path} was not written by fedcore train: its metadata lacks the run's settings")
    defaults = parser.parse_args(["train"])
    for key in RUN_SETTINGS:
        given = getattr(args, key)
        given = str(given) if isinstance(given, Path) else given
        if given != getattr(defaults, key) and given != settings[key]:
            parser.error(
                f"argument --{key.replace('_', '-')}: the run in {args.resume} was trained with {settings[key]!r}, "
                f"not {given!r}; a resumed run keeps its settings"
            )
        value = settings[key]
        setattr(args, key, Path(value) if key == "emnist" and value is not None else value)
    if args.rounds == defaults.rounds:
        args.rounds = int(saved.extra["total_rounds"])
    if args.rounds < saved.round_num:
        parser.error(
            f"argument --rounds: the run in {args.resume} has already trained {saved.round_num} rounds; "
            f"ask for more than {saved.round_num} to continue it"
        )
    args.out = args.resume
    return path


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, console) -> int:
    import tensorflow as tf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import fedcore
    from fedcore import simulation
    from fedcore.simulation import DatasetFileError

    started = time.perf_counter()
    resume_from = resume_settings(args, parser)
    try:
        train_data, test_data, data_name = load_client_data(args)
    except ValueError as e:
        if args.emnist is not None or isinstance(e, DatasetFileError):
            raise
        parser.error(f"argument --num-clients: {e}")
    if args.clients_per_round > len(train_data):
        parser.error(
            f"argument --clients-per-round: {args.clients_per_round} is more than the {len(train_data)} "
            "clients in the training data"
        )
    to_batches = preprocess(args.batch_size, args.epochs)
    to_eval_batches = preprocess(max(args.batch_size, 64), 1)
    data_type = train_data.preprocess(to_batches).element_type_structure
    check_data_matches_model(data_type, input_spec())

    from fedcore import learning

    tf.keras.utils.set_random_seed(args.seed)

    def model_fn():
        return learning.from_keras_model(
            keras_model(args.model),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            input_spec=input_spec(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    client_lr, server_lr = args.client_lr, args.server_lr
    with console.status("tracing the federated averaging and evaluation computations"):
        process = learning.build_federated_averaging_process(
            model_fn,
            client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=client_lr),
            server_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=server_lr),
            report_nonfinite=True,
        )
        evaluation = learning.build_federated_evaluation(model_fn)

    if args.executor == "tensorflow":
        from fedcore.runtime.tensorflow import TensorFlowExecutor

        executor = TensorFlowExecutor()
    elif args.executor == "ray":
        from fedcore.runtime.ray import RayExecutor

        executor = RayExecutor(address=args.address)
    else:
        executor = fedcore.ReferenceExecutor()

    sampler = simulation.ClientSampler(train_data, args.clients_per_round, seed=args.seed)
    eval_ids = test_data.client_ids
    limit = MAX_EVAL_CLIENTS if args.eval_clients is None else args.eval_clients
    if limit == 0:
        eval_ids = []
    elif len(eval_ids) > limit:
        eval_ids = sorted(simulation.sample_clients(eval_ids, limit, round_num=0, seed=args.seed + 1))
    eval_data = simulation.make_federated_data(test_data, eval_ids, preprocess=to_eval_batches) if eval_ids else []

    out = args.out or Path("fedcore-runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    board = TensorBoardLog(out / "tensorboard")
    checkpoints = (
        learning.CheckpointManager(out / "checkpoints", every=args.checkpoint_every, keep=args.keep_checkpoints)
        if args.checkpoint_every > 0 else None
    )
    policy = learning.DropoutPolicy(min_clients=args.min_clients, max_dropped_fraction=args.max_dropped_fraction)

    console.print(
        f"fedcore train: {args.model} model on {data_name}; {args.rounds} rounds of {args.clients_per_round} "
        f"clients, {args.epochs} epoch(s), batch {args.batch_size}, client lr {client_lr}, server lr {server_lr}, "
        f"{args.executor} executor",
        markup=False,
    )
    header = f"{'round':>5}  {'train loss':>10}  {'train acc':>9}  {'held-out acc':>12}  {'seconds':>7}"
    console.print(header, markup=False)

    rows: List[Dict[str, Any]] = []
    try:
        with fedcore.execution_context(executor):
            state = process.initialize()
            first_round = 1
            if resume_from is not None:
                restored = learning.load_checkpoint(resume_from, template=state)
                state, first_round = restored.state, restored.round_num + 1
                rows = [dict(r) for r in restored.extra.get("rows", [])][: restored.round_num]
                write_csv(out / "metrics.csv", rows)  # drops rows of rounds after the checkpoint: they run again
                console.print(
                    f"resuming from {resume_from} (after round {restored.round_num} of {args.rounds})", markup=False
                )
                if first_round > args.rounds:
                    console.print(f"the run has trained all {args.rounds} rounds; --rounds N trains it further",
                                  markup=False)
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as progress:
                task = progress.add_task("training", total=args.rounds, completed=first_round - 1)
                for round_num in range(first_round, args.rounds + 1):
                    round_start = time.perf_counter()
                    clients = sampler(round_num)
                    federated_data = simulation.make_federated_data(train_data, clients, preprocess=to_batches)
                    try:
                        result = learning.run_round(process, state, federated_data, policy, client_ids=clients)
                    except learning.RoundFailedError as e:
                        raise RoundError(_round_failure(e, round_num, state, rows, args, checkpoints, out)) from e
                    state, metrics = result
                    row: Dict[str, Any] = {
                        "round": round_num,
                        "train_loss": find_metric(metrics, LOSS_NAMES, prefer=("train",)),
                        "train_accuracy": find_metric(metrics, ACCURACY_NAMES, prefer=("train",)),
                        "heldout_loss": None,
                        "heldout_accuracy": None,
                        "clients_dropped": result.clients_dropped,
                        "nonfinite_updates": int(find_metric(metrics, ("num_nonfinite_updates",)) or 0),
                    }
                    if eval_data:
                        held_out = evaluation(_model_weights(state), eval_data)
                        row["heldout_loss"] = find_metric(held_out, LOSS_NAMES, prefer=("eval",))
                        row["heldout_accuracy"] = find_metric(held_out, ACCURACY_NAMES, prefer=("eval",))
                    row["seconds"] = round(time.perf_counter() - round_start, 3)
                    rows.append(row)
                    board.write(row)
                    write_csv(out / "metrics.csv", rows)  # after every round, so an interrupted run keeps its rows
                    if checkpoints is not None:
                        checkpoints.maybe_save(state, round_num, checkpoint_extra(args, rows),
                                               final=round_num == args.rounds)
                    progress.console.print(
                        f"{round_num:>5}  {_fmt(row['train_loss']):>10}  {_fmt(row['train_accuracy']):>9}  "
                        f"{_fmt(row['heldout_accuracy']):>12}  {row['seconds']:>7.2f}",
                        markup=False,
                    )
                    for dropped in result.dropped:
                        progress.console.print(
                            f"       round {round_num}: dropped client {dropped.client_id} ({dropped.error})",
                            markup=False,
                        )
                    if row["nonfinite_updates"]:
                        progress.console.print(
                            f"       round {round_num}: left out {row['nonfinite_updates']} non-finite client "
                            "update(s)",
                            markup=False,
                        )
                    progress.advance(task)
    finally:
        board.close()
    plot_metrics(
        out / "metrics.png",
        rows,
        title=f"Federated averaging: {args.model} model, {data_name}, {args.clients_per_round} clients/round",
    )
    total = time.perf_counter() - started
    console.print(
        f"done in {total:.1f}s; wrote {out / 'metrics.csv'}, {out / 'metrics.png'} and TensorBoard scalars "
        f"in {out / 'tensorboard'}",
        markup=False,
    )
    return 0


def _round_failure(error: Exception, round_num: int, state: Any, rows: List[Dict[str, Any]],
                   args: argparse.Namespace, checkpoints: Any, out: Path) -> str:
    """The message for a failed round; saves the last good state first, so that --resume goes on from it."""
    message = f"round {round_num} failed: {error}"
    if checkpoints is None or round_num == 1:
        return message
    path = checkpoints.maybe_save(state, round_num - 1, checkpoint_extra(args, rows), final=True)
    return f"{message}\nthe state after round {round_num - 1} is in {path}; continue with --resume {out}"


def _model_weights(state: Any) -> Any:
    """The model weights inside the server state (``state.model``, or ``state['model']``)."""
    for key in ("model",):
        if hasattr(state, key):
            return getattr(state, key)
        try:
            return state[key]
        except (KeyError, TypeError, IndexError):
            pass
    return state


if __name__ == "__main__":
    sys.exit(main())

"""``fedcore train``: the training loop, its checkpoints and the settings that ``--resume`` restores."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from fedcore.cli.models import MODELS, DataModelMismatch
from fedcore.cli.outputs import ACCURACY_NAMES, CSV_COLUMNS, LOSS_NAMES, find_metric
from fedcore.cli.parser import EXECUTORS, MAX_EVAL_CLIENTS


def train_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rich.console import Console

    from fedcore.simulation import DatasetDownloadError, DatasetFileError

    console = Console(highlight=False, soft_wrap=True)
    from fedcore.learning.checkpoint import CheckpointError

    try:
        return _train(args, parser, console)
    except (DataModelMismatch, DatasetFileError, DatasetDownloadError, CheckpointError, RoundError) as e:
        print(f"fedcore train: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a file that cannot be written, a Ray cluster that does not answer
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
        print(f"fedcore train: error: {e}{where}", file=sys.stderr)
        return 1


class RoundError(RuntimeError):
    """A round failed (too many clients dropped); the message says which round and where the state was saved."""


# How long --executor ray --address HOST:PORT waits for a TCP connection to the cluster before giving up.
RAY_CONNECT_TIMEOUT_S = 10.0

# Settings that decide a run's results: saved in its checkpoints, and taken from them on --resume.
RUN_SETTINGS = ("model", "emnist", "num_clients", "clients_per_round", "epochs", "batch_size", "client_lr",
                "server_lr", "executor", "eval_clients", "seed")


_WHOLE = {"type": "integer", "minimum": 1}
# What ``checkpoint_extra`` writes, as a JSON Schema: --resume checks a checkpoint's metadata against it.
EXTRA_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["settings", "total_rounds", "rows"],
    "properties": {
        "settings": {
            "type": "object",
            "required": list(RUN_SETTINGS),
            "properties": {
                "model": {"enum": list(MODELS)},
                "emnist": {"type": ["string", "null"]},
                "num_clients": _WHOLE,
                "clients_per_round": _WHOLE,
                "epochs": _WHOLE,
                "batch_size": _WHOLE,
                "client_lr": {"type": "finite", "exclusiveMinimum": 0},
                "server_lr": {"type": "finite", "exclusiveMinimum": 0},
                "executor": {"enum": list(EXECUTORS)},
                "eval_clients": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
                "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            },
        },
        "total_rounds": _WHOLE,
        "rows": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["round"],
                "additionalProperties": False,
                "properties": {
                    "round": _WHOLE,
                    **{c: {"type": ["number", "null"]} for c in CSV_COLUMNS if c != "round"},
                },
            },
        },
    },
}


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

    Returns the checkpoint's path (None without --resume).  The metadata is
    checked against ``EXTRA_SCHEMA`` (a CheckpointError names the file and the
    field).  A setting given on the command line (even with its default
    value, such as ``--seed 0``) that differs from the saved one is an
    argument error; ``--rounds`` may raise the run's total number of rounds.
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
    # Checks the file now; the state is read again once the process is built.
    saved = load_checkpoint(path, extra_schema=EXTRA_SCHEMA)
    settings, rows = saved.extra["settings"], saved.extra["rows"]
    rounds = [row["round"] for row in rows[: saved.round_num]]
    if rounds != list(range(1, saved.round_num + 1)):
        raise CheckpointError(
            f"{path} does not hold what fedcore train saves: its metadata field extra.rows has the rounds "
            f"{rounds[:10]}{'...' if len(rounds) > 10 else ''}, not one row for each of the {saved.round_num} "
            "rounds trained"
        )
    given_options = getattr(args, "given_options", frozenset())
    for key in RUN_SETTINGS:
        given = getattr(args, key)
        given = str(given) if isinstance(given, Path) else given
        if key in given_options and given != settings[key]:
            parser.error(
                f"argument --{key.replace('_', '-')}: the run in {args.resume} was trained with {settings[key]!r}, "
                f"not {given!r}; a resumed run keeps its settings"
            )
        value = settings[key]
        setattr(args, key, Path(value) if key == "emnist" and value is not None else value)
    if "rounds" not in given_options:
        args.rounds = saved.extra["total_rounds"]
    if args.rounds < saved.round_num:
        parser.error(
            f"argument --rounds: the run in {args.resume} has already trained {saved.round_num} rounds; "
            f"ask for more than {saved.round_num} to continue it"
        )
    args.out = args.resume
    return path


def _check_out(out: Optional[Path], parser: argparse.ArgumentParser) -> None:
    """--out must be a directory or a path where one can be made: no file on the way."""
    if out is None:
        return
    for place in (out, *out.parents):
        if place.exists():
            if not place.is_dir():
                what = "is" if place == out else f"is inside {place}, which is"
                parser.error(f"argument --out: {out} {what} a file, not a directory")
            return


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, console) -> int:
    import tensorflow as tf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import fedcore
    from fedcore import cli  # its helpers, looked up at call time: patching fedcore.cli.NAME takes effect here
    from fedcore import simulation
    from fedcore.simulation import DatasetFileError

    started = time.perf_counter()
    resume_from = resume_settings(args, parser)
    _check_out(args.out, parser)
    if args.executor == "ray" and args.address is not None:
        from fedcore.runtime.ray.executor import check_reachable

        check_reachable(args.address, RAY_CONNECT_TIMEOUT_S)  # before minutes of tracing; ConnectionError: exit 1
    try:
        train_data, test_data, data_name = cli.load_client_data(args)
    except ValueError as e:
        if args.emnist is not None or isinstance(e, DatasetFileError):
            raise
        parser.error(f"argument --num-clients: {e}")
    if args.clients_per_round > len(train_data):
        parser.error(
            f"argument --clients-per-round: {args.clients_per_round} is more than the {len(train_data)} "
            "clients in the training data"
        )
    if args.min_clients > args.clients_per_round:
        parser.error(
            f"argument --min-clients: {args.min_clients} is more than the {args.clients_per_round} clients per "
            "round, so no round could complete"
        )
    to_batches = cli.preprocess(args.batch_size, args.epochs)
    to_eval_batches = cli.preprocess(max(args.batch_size, 64), 1)
    data_type = train_data.preprocess(to_batches).element_type_structure
    cli.check_data_matches_model(data_type, cli.input_spec())

    from fedcore import learning

    tf.keras.utils.set_random_seed(args.seed)

    def model_fn():
        return learning.from_keras_model(
            cli.keras_model(args.model),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            input_spec=cli.input_spec(),
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

        executor = RayExecutor(address=args.address)  # checks the address again, with its connect_timeout_s
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
    board = cli.TensorBoardLog(out / "tensorboard")
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
                rows = [dict(r) for r in restored.extra["rows"]][: restored.round_num]
                cli.write_csv(out / "metrics.csv", rows)  # drops rows of rounds after the checkpoint: they run again
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
                    cli.write_csv(out / "metrics.csv", rows)  # after every round, so an interrupted run keeps its rows
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
    cli.plot_metrics(
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


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

"""``fedcore train``: the training loop, its checkpoints and the settings that ``--resume`` restores."""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from fedcore.cli.models import MODELS, DataModelMismatch
from fedcore.cli.outputs import ACCURACY_NAMES, CSV_COLUMNS, LOSS_NAMES, find_metric
from fedcore.cli.parser import EXECUTORS, MAX_EVAL_CLIENTS


def train_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs ``fedcore train``: 0 when done, 1 on a failure (one message, no traceback unless --verbose),
    130 when interrupted with Ctrl-C (after writing what the completed rounds produced)."""
    report = Reporter(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False))
    try:
        return _train(args, parser, report)
    except Exception as e:  # noqa: BLE001 - a failure the user can act on gets one line; anything else propagates
        from fedcore.learning.checkpoint import CheckpointError
        from fedcore.simulation import DatasetDownloadError, DatasetFileError

        if isinstance(e, OSError):  # a full disk, a file that cannot be written, a Ray cluster that does not answer
            where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
            message = f"{e}{where}"
        elif isinstance(e, (DataModelMismatch, DatasetFileError, DatasetDownloadError, CheckpointError, RoundError,
                            MissingExtra)):
            message = str(e)
        else:
            raise
        if report.verbose:
            import traceback

            report.error("".join(traceback.format_exception(e)).rstrip())
        report.error(f"fedcore train: error: {message}")
        return 1
    finally:
        report.close()


class MissingExtra(ImportError):
    """An optional dependency that the command needs is not installed; the message says how to install it."""


class Reporter:
    """What ``fedcore train`` prints: to stdout (nothing with --quiet), to stderr, and into OUT/train.log.

    Output goes through a rich Console, which writes plain lines (no colours, no progress bar) when
    stdout is not a terminal.
    """

    def __init__(self, quiet: bool = False, verbose: bool = False):
        from fedcore._extras import require

        Console = require("rich.console", "cli", "fedcore train's output").Console

        self.quiet, self.verbose = quiet, verbose
        self.console = Console(highlight=False, soft_wrap=True, quiet=quiet)
        self._log = None

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal and not self.quiet

    def open_log(self, path: Path) -> None:
        self._log = open(path, "a", encoding="utf-8")

    def _to_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text + "\n")
            self._log.flush()

    def line(self, text: str = "", console: Any = None) -> None:
        """One line on stdout (through ``console``, a progress display's, if given) and in the log."""
        self._to_log(text)
        self._print(text, console)

    def detail(self, text: str) -> None:
        """A line printed with --verbose only (always logged)."""
        self._to_log(text)
        if self.verbose:
            self._print(text, None)

    def _print(self, text: str, console: Any) -> None:
        if self.quiet:
            return
        if self.console.is_terminal:
            (console or self.console).print(text, markup=False)
        else:
            # A plain print, flushed, for pipes and files: a Ctrl-C inside rich's rendering could leave
            # its buffer holding the lines after it.
            print(text, flush=True)

    def error(self, text: str) -> None:
        """Lines on stderr, with --quiet too, and in the log."""
        self._to_log(text)
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


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
    if getattr(args, "overwrite", False):
        parser.error("argument --overwrite: not allowed with --resume, which continues the run in its directory")
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


# What fedcore train writes into --out; --overwrite deletes these (and nothing else) first.
RUN_OUTPUTS = ("checkpoints", "tensorboard", "metrics.csv", "metrics.png", "model.keras", "config.toml", "train.log")


def _choose_out(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """The run's directory: --out (new, empty, or with --overwrite), the --resume directory, or a new one."""
    if args.resume is not None:
        return args.out  # resume_settings made it the run's own directory
    if args.out is None:
        base = Path("fedcore-runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out, n = base, 1
        while out.exists():
            out, n = base.with_name(f"{base.name}-{n}"), n + 1
        return out
    out = args.out
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        earlier = [name for name in RUN_OUTPUTS if (out / name).exists()]
        if earlier:
            parser.error(
                f"argument --out: {out} holds another run ({', '.join(earlier)}); give a new or empty directory, "
                f"add --overwrite to replace that run, or continue it with --resume {out}"
            )
        held = sorted(p.name for p in out.iterdir())
        parser.error(
            f"argument --out: {out} is not empty (it holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''}); "
            "give a new or empty directory, or add --overwrite to write the run there anyway"
        )
    return out


def _clear_outputs(out: Path) -> None:
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as e:
        from fedcore._dist import install_hint

        raise MissingExtra(
            f"--executor ray needs Ray, which is not installed ({e}); install the ray extra: {install_hint('ray')}"
        ) from None


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out``."""
    return f"fedcore train --resume {shlex.quote(str(out))}"


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser, report: Reporter) -> int:
    started = time.perf_counter()
    resume_from = resume_settings(args, parser)
    _check_out(args.out, parser)
    out = _choose_out(args, parser)
    if args.executor == "ray":
        _require_ray()
        if args.address is not None:
            from fedcore.runtime.ray.executor import check_reachable

            check_reachable(args.address, RAY_CONNECT_TIMEOUT_S)  # before minutes of tracing; ConnectionError: exit 1

    from fedcore import cli  # its helpers, looked up at call time: patching fedcore.cli.NAME takes effect here
    from fedcore.simulation import DatasetFileError

    # (TensorFlow's notes on how it vectorizes client work, e.g. "Conv2DBackpropFilter uses a while_loop",
    # are dropped by the TF executor itself where it decides how the clients run.)
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

    # Everything is checked: the run's directory gets its settings and its log.
    if args.resume is None and args.overwrite and out.is_dir():
        _clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    report.open_log(out / "train.log")
    report.detail(f"# fedcore train, {datetime.datetime.now().isoformat(timespec='seconds')}: "
                  f"{shlex.join(['fedcore', 'train', *_argv_of(args, parser)])}")
    from fedcore.cli.parser import config_toml

    (out / "config.toml").write_text(config_toml(args, parser), encoding="utf-8")
    return _run(args, report, out, resume_from, started, train_data, test_data, data_name, to_batches,
                to_eval_batches)


def _argv_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[str]:
    """The options of ``args`` that differ from their defaults, as a command line (for the log)."""
    from fedcore.cli.parser import _train_options

    argv: List[str] = []
    for dest, action in _train_options(parser.train_parser).items():
        value = getattr(args, dest, None)
        if value == action.default or dest == "config":
            continue
        if isinstance(value, bool):
            argv.append(action.option_strings[-1])
        else:
            argv += [action.option_strings[-1], str(value)]
    return argv


def _run(args, report: Reporter, out: Path, resume_from, started, train_data, test_data, data_name, to_batches,
         to_eval_batches) -> int:
    import tensorflow as tf
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import fedcore
    from fedcore import cli, learning, simulation

    tf.keras.utils.set_random_seed(args.seed)

    def model_fn():
        return learning.from_keras_model(
            cli.keras_model(args.model),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            input_spec=cli.input_spec(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    client_lr, server_lr = args.client_lr, args.server_lr
    report.line(
        f"fedcore train: {args.model} model on {data_name}; {args.rounds} rounds of {args.clients_per_round} "
        f"clients, {args.epochs} epoch(s), batch {args.batch_size}, client lr {client_lr}, server lr {server_lr}, "
        f"{args.executor} executor; writing into {out}"
    )
    tracing_started = time.perf_counter()
    tracing = "tracing the federated averaging and evaluation computations"
    if not report.interactive:
        report.line(f"{tracing}...")
    with report.console.status(tracing):
        process = learning.build_federated_averaging_process(
            model_fn,
            client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=client_lr),
            server_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=server_lr),
            report_nonfinite=True,
        )
        evaluation = learning.build_federated_evaluation(model_fn)
    report.detail(f"traced in {time.perf_counter() - tracing_started:.1f}s")

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

    board = cli.TensorBoardLog(out / "tensorboard")
    checkpoints = (
        learning.CheckpointManager(out / "checkpoints", every=args.checkpoint_every, keep=args.keep_checkpoints)
        if args.checkpoint_every > 0 else None
    )
    policy = learning.DropoutPolicy(min_clients=args.min_clients, max_dropped_fraction=args.max_dropped_fraction)

    rows: List[Dict[str, Any]] = []
    state: Any = None
    first_round = 1
    interrupted = False  # by Ctrl-C
    discarded: Optional[int] = None  # the round that Ctrl-C stopped before it was complete
    saved_round = 0  # the round of the newest checkpoint
    try:
        with fedcore.execution_context(executor):
            state = process.initialize()
            if resume_from is not None:
                restored = learning.load_checkpoint(resume_from, template=state)
                state, first_round = restored.state, restored.round_num + 1
                saved_round = restored.round_num
                rows = [dict(r) for r in restored.extra["rows"]][: restored.round_num]
                cli.write_csv(out / "metrics.csv", rows)  # drops rows of rounds after the checkpoint: they run again
                report.line(f"resuming from {resume_from} (after round {restored.round_num} of {args.rounds})")
                if first_round > args.rounds:
                    report.line(f"the run has trained all {args.rounds} rounds; --rounds N trains it further")
            report.line(f"{'round':>5}  {'train loss':>10}  {'train acc':>9}  {'held-out acc':>12}  {'seconds':>7}")
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=report.console,
                transient=True,
                disable=not report.interactive,
            ) as progress:
                task = progress.add_task("training", total=args.rounds, completed=first_round - 1)
                round_num = first_round
                boarded = printed = 0  # the last round written to TensorBoard, and printed
                try:
                    for round_num in range(first_round, args.rounds + 1):
                        new_state, row, result = _one_round(
                            args, process, evaluation, state, round_num, sampler, train_data, to_batches, policy,
                            eval_data, rows, checkpoints, out,
                        )
                        state, rows = new_state, [*rows, row]  # together: Ctrl-C cannot fall between the two
                        board.write(row)
                        boarded = round_num
                        cli.write_csv(out / "metrics.csv", rows)  # after every round: an interrupted run keeps them
                        if checkpoints is not None:
                            if checkpoints.maybe_save(state, round_num, checkpoint_extra(args, rows),
                                                      final=round_num == args.rounds) is not None:
                                saved_round = round_num
                        _print_round(report, progress.console, row, result)
                        printed = round_num
                        progress.advance(task)
                except KeyboardInterrupt:
                    # Ctrl-C after a round was complete, during its bookkeeping: finish that instead.
                    interrupted = True
                    discarded = None if rows and rows[-1]["round"] == round_num else round_num
                    if rows and rows[-1]["round"] == round_num:
                        if boarded != round_num:
                            board.write(rows[-1])
                        cli.write_csv(out / "metrics.csv", rows)
                        if printed != round_num:
                            _print_round(report, progress.console, rows[-1], result)
    finally:
        board.close()
    completed = len(rows) and rows[-1]["round"]
    if interrupted:
        # The interrupted round is discarded: ``state`` and ``rows`` end with the last completed one.
        # Nothing reads a state that a round left half-made (run_round returns the new state whole).
        if checkpoints is not None and completed and completed > saved_round:
            checkpoints.maybe_save(state, completed, checkpoint_extra(args, rows), final=True)
            saved_round = completed
    title = f"Federated averaging: {args.model} model, {data_name}, {args.clients_per_round} clients/round"
    cli.plot_metrics(out / "metrics.png", rows, title=title)
    wrote = ["metrics.csv", "metrics.png"]
    if completed:
        cli.save_keras_model(args.model, state, out / "model.keras")
        wrote.append("model.keras")
    wrote += ["config.toml", "train.log", "tensorboard/"] + (["checkpoints/"] if saved_round else [])
    if interrupted:
        kept = f"kept the rounds up to {completed}" if completed else "no round completed"
        when = f"during round {discarded} of {args.rounds} ({kept}, discarded round {discarded})" if discarded \
            else f"after round {completed} of {args.rounds}"
        report.error(f"fedcore train: interrupted {when}; wrote {', '.join(wrote)} into {out}")
        if saved_round:
            report.error(f"continue the run with: {resume_command(out)}")
        elif checkpoints is None:
            report.error("this run saved no checkpoints (--checkpoint-every 0), so it cannot be resumed")
        else:
            report.error("no round completed, so there is nothing to resume")
        return 130
    _print_summary(report, rows, first_round, started, out, wrote)
    return 0


def _one_round(args, process, evaluation, state, round_num, sampler, train_data, to_batches, policy, eval_data,
               rows, checkpoints, out):
    """Runs one round and evaluates its model; returns (new state, metrics row, the round's result)."""
    from fedcore import learning, simulation

    round_start = time.perf_counter()
    clients = sampler(round_num)
    federated_data = simulation.make_federated_data(train_data, clients, preprocess=to_batches)
    try:
        result = learning.run_round(process, state, federated_data, policy, client_ids=clients)
    except learning.RoundFailedError as e:
        raise RoundError(_round_failure(e, round_num, state, rows, args, checkpoints, out)) from e
    new_state, metrics = result
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
        held_out = evaluation(_model_weights(new_state), eval_data)
        row["heldout_loss"] = find_metric(held_out, LOSS_NAMES, prefer=("eval",))
        row["heldout_accuracy"] = find_metric(held_out, ACCURACY_NAMES, prefer=("eval",))
    row["seconds"] = round(time.perf_counter() - round_start, 3)
    return new_state, row, result


def _print_round(report: Reporter, console: Any, row: Dict[str, Any], result: Any) -> None:
    round_num = row["round"]
    report.line(
        f"{round_num:>5}  {_fmt(row['train_loss']):>10}  {_fmt(row['train_accuracy']):>9}  "
        f"{_fmt(row['heldout_accuracy']):>12}  {row['seconds']:>7.2f}",
        console,
    )
    for dropped in result.dropped:
        report.line(f"       round {round_num}: dropped client {dropped.client_id} ({dropped.error})", console)
    if row["nonfinite_updates"]:
        report.line(f"       round {round_num}: left out {row['nonfinite_updates']} non-finite client update(s)",
                    console)


def _print_summary(report: Reporter, rows: List[Dict[str, Any]], first_round: int, started: float, out: Path,
                   wrote: List[str]) -> None:
    """The end of a run, as Keras' history and Flower's summary give it: the final and best numbers, the time."""
    total = time.perf_counter() - started
    trained = [r for r in rows if r["round"] >= first_round]
    per_round = sum(r["seconds"] for r in trained) / len(trained) if trained else 0.0
    report.line(f"done in {total:.1f}s: {len(trained)} round(s), {per_round:.2f}s per round")
    if rows:
        last = rows[-1]
        final = f"after round {last['round']}: train loss {_fmt(last['train_loss'])}, " \
                f"train accuracy {_fmt(last['train_accuracy'])}"
        held_out = [r for r in rows if r.get("heldout_accuracy") is not None]
        if held_out:
            best = max(held_out, key=lambda r: r["heldout_accuracy"])
            final += (f", held-out accuracy {_fmt(last['heldout_accuracy'])} "
                      f"(best {_fmt(best['heldout_accuracy'])}, round {best['round']})")
        report.line(final)
    report.line(f"wrote {', '.join(wrote)} into {out}")


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

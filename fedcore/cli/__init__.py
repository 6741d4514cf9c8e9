"""The ``fedcore`` command: ``fedcore train`` runs federated averaging; ``fedcore signature`` prints a type signature;
``fedcore compile`` and ``fedcore inspect`` write and read deployment forms (see fedcore.cli.forms).

``fedcore train`` trains a model with federated averaging on the embedded
digits data set (or Federated EMNIST with ``--emnist DIR``), shows a progress
bar and one row per round, and writes into ``--out``: ``metrics.csv``,
TensorBoard scalars under ``tensorboard/``, ``metrics.png``, the trained model
``model.keras``, the run's settings ``config.toml`` and its log ``train.log``.

Importing this package is cheap: TensorFlow is imported only by a command that
needs it, so that ``fedcore --help`` answers at once.

The training loop calls the helpers below through this package, so that
patching ``fedcore.cli.NAME`` (as tests and benchmarks/long_run.py do) takes effect.
"""

from __future__ import annotations

from typing import Optional, Sequence

from fedcore.cli.forms import FORMS, compile_command, describe, inspect_command  # noqa: E402
from fedcore.cli.models import (  # noqa: E402
    MODELS,
    DataModelMismatch,
    check_data_matches_model,
    input_spec,
    keras_model,
    load_client_data,
    preprocess,
    save_keras_model,
)
from fedcore.cli.outputs import (  # noqa: E402
    ACCURACY_NAMES,
    CSV_COLUMNS,
    LOSS_NAMES,
    TensorBoardLog,
    find_metric,
    plot_metrics,
    write_csv,
)
from fedcore.cli.parser import EXECUTORS, MAX_EVAL_CLIENTS, apply_config, build_parser  # noqa: E402
from fedcore.cli.signature import resolve_target, signature_command  # noqa: E402
from fedcore.cli.train import (  # noqa: E402
    RUN_SETTINGS,
    RUN_OUTPUTS,
    MissingExtra,
    Reporter,
    RoundError,
    checkpoint_extra,
    resume_command,
    resume_settings,
    run_settings,
    train_command,
)

__all__ = [
    "ACCURACY_NAMES", "CSV_COLUMNS", "apply_config", "EXECUTORS", "FORMS", "LOSS_NAMES", "MAX_EVAL_CLIENTS", "MODELS", "RUN_SETTINGS",
    "DataModelMismatch", "RoundError", "TensorBoardLog", "build_parser", "check_data_matches_model",
    "checkpoint_extra", "compile_command", "describe", "find_metric", "input_spec", "inspect_command",
    "keras_model", "load_client_data", "main", "plot_metrics", "preprocess", "resolve_target", "resume_settings",
    "run_settings", "save_keras_model", "signature_command", "RUN_OUTPUTS", "MissingExtra", "Reporter",
    "resume_command", "train_command", "write_csv",
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    0: done; 1: the command failed (the message says why); 2: bad usage (argparse's message, raised as
    SystemExit); 130: interrupted with Ctrl-C.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        from fedcore._quiet import import_tensorflow

        import_tensorflow()
        if args.command == "train" and args.config is not None:
            args = apply_config(parser, argv, args)
        if args.command == "signature":
            return signature_command(args, parser)
        if args.command == "compile":
            return compile_command(args, parser)
        if args.command == "inspect":
            return inspect_command(args, parser)
        return train_command(args, parser)
    except KeyboardInterrupt:  # outside the training loop, which stops cleanly by itself
        print("fedcore: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if "pip install" not in str(e):  # not one of fedcore's "this needs an extra" messages
            raise
        print(f"fedcore: {e}", file=sys.stderr)
        return 1

"""Importing what an optional part of fedcore needs, with an error that says which extra installs it.

fedcore's own dependencies are kept to what its core needs; the command line, the data
sets, Ray and TensorFlow itself come from extras (``pip install 'fedcore-tf[cli,datasets]'``).
Code that needs one imports it through :func:`require`, so that a missing package is
reported with the command that installs it rather than as a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from fedcore._dist import install_hint



def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports ``module`` (e.g. ``"sklearn.datasets"``) and returns it.

    Args:
        module: the dotted name of the module to import.
        extra: the extra of fedcore's distribution that installs it (``"cli"``, ``"datasets"``, ...).
        purpose: what needs it, as the start of the message: ``"fedcore train's plot"``.

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: when ``module``'s package is not installed; the message names
            ``purpose``, the missing package and the ``pip install`` command of ``extra``.
            A module missing *inside* an installed package (a broken installation) is
            re-raised unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        package = module.split(".")[0]
        if e.name != package and not _absent(package):
            raise
        raise ModuleNotFoundError(
            f"{purpose} needs the package {package!r}, which is not installed; it comes with "
            f"fedcore's {extra!r} extra: {install_hint(extra)}",
            name=package,
        ) from None


def _absent(package: str) -> bool:
    """Whether the top-level ``package`` cannot be imported at all (not installed, or blocked)."""
    try:
        return importlib.util.find_spec(package) is None
    except ValueError:  # sys.modules[package] is None: an import of it was blocked
        return True


def require_tensorflow() -> None:
    """Raises a ModuleNotFoundError that says how to install TensorFlow when it is absent.

    fedcore's distribution does not pin one TensorFlow build: ``[cpu]`` installs the
    CPU-only build, ``[gpu]`` the CUDA one, and any TensorFlow already installed is used.

    Raises:
        ModuleNotFoundError: when no ``tensorflow`` module can be found.
    """
    if _absent("tensorflow"):
        raise ModuleNotFoundError(
            "fedcore needs TensorFlow (2.16 or later), which is not installed: "
            f"{install_hint('cpu')} for the CPU-only build, or {install_hint('gpu')} "
            "for a CUDA GPU on Linux (or install a TensorFlow build of your choice)",
            name="tensorflow",
        )

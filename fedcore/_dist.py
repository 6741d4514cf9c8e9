"""The name under which fedcore is installed, for messages that say how to install something.

``import fedcore`` imports the package ``fedcore``; the distribution that pip installs may have
another name.  Messages take it from here, so that it is written down in one place.
"""

from __future__ import annotations

# The distribution's name on the package index (what ``pip install`` takes).
DIST_NAME = "fedcore-tf"


def distribution_name() -> str:
    """The name of the installed distribution that provides the ``fedcore`` package (``DIST_NAME`` if unknown)."""
    try:
        from importlib.metadata import packages_distributions

        names = packages_distributions().get("fedcore") or []
    except Exception:  # noqa: BLE001 - broken metadata of some other distribution: fall back to the constant
        names = []
    return DIST_NAME if DIST_NAME in names or not names else names[0]


def install_hint(extra: str) -> str:
    """The command that installs one of fedcore's extras: ``pip install 'NAME[extra]'``."""
    return f"pip install '{distribution_name()}[{extra}]'"

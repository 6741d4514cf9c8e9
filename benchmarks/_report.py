"""Writing one benchmark's section of docs/benchmarks.md, keeping the others."""

from __future__ import annotations

import os

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks.md")


def write_section(title_prefix: str, section: str, path: str = DOCS) -> None:
    """Replaces the section whose heading starts with ``title_prefix`` (or appends it)."""
    with open(path) as f:
        body = f.read()
    head, *parts = body.split("\n## ")
    parts = ["## " + p for p in parts]
    replaced = False
    for i, part in enumerate(parts):
        if part.startswith(title_prefix):
            parts[i], replaced = section, True
    if not replaced:
        parts.append(section)
    with open(path, "w") as f:
        f.write(head.rstrip() + "\n\n" + "\n".join(p.rstrip() + "\n" for p in parts))


def cpu_model() -> str:
    """The CPU's model name (kernels and ratios differ from one CPU family to another)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"

"""The distribution as users get it: the sdist and the wheel built from it, installed with no source tree.

One test, because building and installing is the slow part: it builds the sdist, then the
wheel from the unpacked sdist (``python -m build``; so a file the package needs but the sdist
lacks fails here), checks both archives' contents and metadata, installs the wheel into a
fresh virtual environment and runs the command, the README's first computation and every
``.lark`` grammar from there, in a folder outside the source tree.

The fresh environment gets fedcore from the wheel only (``pip install --no-deps``); its
dependencies (TensorFlow and the rest) are those of the interpreter running the tests, made
visible through a ``.pth`` file, so that the test does not download or unpack 2 GB of
TensorFlow again. (``venv --system-site-packages`` would not do: it exposes the base
interpreter's packages, not those of the virtual environment the tests run in.) The
editable install of the source tree in that environment is not activated there: its finder
is loaded by a ``.pth`` file, and ``.pth`` files are read only in site directories.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import fedcore
from fedcore._dist import DIST_NAME

ROOT = Path(__file__).resolve().parent.parent

# Each grammar the package ships, and code that must work with it from the installed wheel.
GRAMMAR_CHECKS = {
    "fedcore/types/notation.lark": (
        "t = fedcore.to_type('{<x=float32[?,784],y=int32[?]>*}@CLIENTS')\n"
        "assert str(t) == '{<x=float32[?,784],y=int32[?]>*}@CLIENTS', t\n"
    ),
    "fedcore/compiler/ir.lark": (
        "from fedcore.compiler.ir_parser import parse_ir\n"
        "node = parse_ir('(x:{int32}@CLIENTS -> federated_sum(x))')\n"
        "assert str(node.type_signature) == '({int32}@CLIENTS -> int32@SERVER)', node.type_signature\n"
    ),
}

# The README's first computation, as a user would paste it, and what it prints.
FIRST_COMPUTATION = textwrap.dedent(
    """
    import tensorflow as tf
    import fedcore

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def get_average_temperature(sensor_readings):
        return fedcore.federated_mean(sensor_readings)

    print(get_average_temperature.type_signature)
    print(get_average_temperature([68.5, 70.3, 69.8]))
    """
)

_IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "fedcore-runs", ".hypothesis", ".pytest_cache"
)


def _run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _extras_in_setup_cfg() -> set:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return set(config["options.extras_require"])


def test_the_wheel_built_from_the_sdist_installs_and_works_without_the_source_tree(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_IGNORED)
    dist = tmp_path / "dist"
    # --no-isolation: the build backend (setuptools) comes from this environment, not the index.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)], cwd=tmp_path)
    version = fedcore.__version__
    stem = f"{DIST_NAME.replace('-', '_')}-{version}"
    (wheel,) = dist.glob(f"{stem}-py3-none-any.whl")
    (sdist,) = dist.glob("*.tar.gz")  # fedcore_tf-... (setuptools 69.3 and later) or fedcore-tf-...

    grammars = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fedcore").rglob("*.lark")}
    assert grammars == set(GRAMMAR_CHECKS), f"every grammar needs a check here; the package has {sorted(grammars)}"

    # The wheel: the package with its grammars and py.typed, the license, no tests.
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = Parser().parsestr(z.read(f"{stem}.dist-info/METADATA").decode())
        entry_points = z.read(f"{stem}.dist-info/entry_points.txt").decode()
    assert grammars <= names, sorted(grammars - names)
    assert "fedcore/py.typed" in names
    assert any(re.fullmatch(rf"{stem}\.dist-info/(licenses/)?LICENSE", n) for n in names), sorted(names)[-10:]
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {n.split("/")[0] for n in names} == {"fedcore", f"{stem}.dist-info"}
    assert metadata["Name"] == DIST_NAME and metadata["Version"] == version
    assert "Apache-2.0" in (metadata["License-Expression"], metadata["License"])
    assert metadata["Requires-Python"] == ">=3.10"
    assert set(metadata.get_all("Provides-Extra")) == _extras_in_setup_cfg()
    assert {"cpu", "gpu", "cli", "datasets", "tensorboard", "ray"} <= set(metadata.get_all("Provides-Extra"))
    requires = metadata.get_all("Requires-Dist")
    assert not [r for r in requires if re.match(r"(tensorflow|rich|matplotlib|scikit-learn|h5py|ray)\b", r)
                and "extra ==" not in r], requires
    classifiers = metadata.get_all("Classifier")
    assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in classifiers
    assert "fedcore = fedcore.cli:main" in entry_points

    # The sdist: what its tests read (the tests, the docs pages, the benchmarks a test runs).
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    for needed in ("LICENSE", "README.md", "setup.cfg", "pyproject.toml", "mkdocs.yml", "tests/test_docs.py",
                   "docs/types.md", "benchmarks/long_run.py", "fedcore/py.typed", *grammars):
        assert needed in members, needed
    # Every file of the tests, the docs and the benchmarks (what the tests read), as in the source tree.
    read_by_tests = {
        p.relative_to(source).as_posix()
        for folder in ("tests", "docs", "benchmarks")
        for p in (source / folder).rglob("*")
        if p.is_file()
    }
    assert read_by_tests <= members, sorted(read_by_tests - members)

    # A fresh environment holding fedcore from the wheel only.
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=tmp_path).stdout.strip())
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (env_site / "zz_dependencies_of_the_test_environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    script = (
        "import fedcore, importlib.metadata\n"
        f"assert fedcore.__file__.startswith({str(env_site)!r}), fedcore.__file__\n"
        f"assert importlib.metadata.version({DIST_NAME!r}) == {version!r}\n"
        + "".join(GRAMMAR_CHECKS.values())
        + FIRST_COMPUTATION
    )
    out = _run([str(python), "-c", script], cwd=work, env=env).stdout.splitlines()
    assert out[-2:] == ["({float32}@CLIENTS -> float32@SERVER)", "69.53333"], out

    fedcore_command = str(env_dir / "bin" / "fedcore")
    help_text = _run([fedcore_command, "--help"], cwd=work, env=env).stdout
    assert "train" in help_text
    if "--version" in help_text:
        assert version in _run([fedcore_command, "--version"], cwd=work, env=env).stdout
    run_dir = work / "run"
    _run([fedcore_command, "train", "--rounds", "1", "--num-clients", "4", "--clients-per-round", "2", "--epochs", "1",
          "--checkpoint-every", "0", "--out", str(run_dir)], cwd=work, env=env)
    assert (run_dir / "metrics.csv").read_text().count("\n") >= 2

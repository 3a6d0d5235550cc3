"""The command line as a new user meets it after `pip install anonymize` (no
extras, not the repository's editable install): its version, and the cluster
commands without the [distributed] extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.videos import make_video

ROOT = Path(__file__).resolve().parent.parent


def anonymize(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``anonymize ARGS`` in a subprocess, with the modules ``block`` names
    unimportable (as where the extra that installs them is not installed)."""
    code = ("import sys\n"
            f"for name in {block!r}: sys.modules[name] = None\n"
            "from anonymize.cli import main\n"
            "sys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANONYMIZE_", "AWS_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_version_is_the_projects():
    """`anonymize --version` said 'the following arguments are required: COMMAND'."""
    proc = anonymize("--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"anonymize {version}\n", "")


EXTRA = ("celery", "kombu", "redis", "boto3", "botocore")


@pytest.mark.parametrize("args, block, named", [
    (("status",), EXTRA, "celery"), (("cancel", "abc"), EXTRA, "celery"),
    (("submit", "VIDEO"), EXTRA, "celery"), (("worker",), EXTRA, "redis"),
    (("status",), ("redis",), "redis"),
])
def test_cluster_commands_without_the_distributed_extra_say_so_in_one_line(args, block, named,
                                                                          tmp_path):
    """A plain `pip install anonymize` has no Celery, Redis or boto3: the cluster
    commands ended in a ModuleNotFoundError traceback."""
    video = make_video(tmp_path / "in.mp4", n_frames=2)
    proc = anonymize(*(str(video) if a == "VIDEO" else a for a in args), block=block)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == (f"anonymize: error: `anonymize {args[0]}` needs the distributed extra "
                        f"({named} is not installed): pip install 'anonymize[distributed]'")


def test_a_missing_module_of_no_extra_keeps_its_traceback():
    """Only the extras' modules are the user's to install; another missing module is a bug."""
    proc = anonymize("models", "list", block=("models.registry",))
    assert proc.returncode == 1 and "Traceback" in proc.stderr


PACKAGES = ("anonymize", "pipeline", "models", "tasks", "workers")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_wheel_holds_every_file_the_packages_read(tmp_path):
    """A non-editable install runs from the wheel alone: every module and every
    data file of the packages (the detections schema, ...) must be in it, the
    tests, benchmarks and deploy files must not. Built from a copy of the
    tracked files, so no build/ is left in the checkout."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=300,
                   capture_output=True)
    wheel, = (tmp_path / "dist").glob("anonymize-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    shipped = {n for n in filter(None, tracked)
               if n.split("/")[0] in PACKAGES and not n.endswith(".md")}
    assert shipped - names == set()
    assert "anonymize = anonymize.cli:main" in entry_points
    assert {n.split("/")[0] for n in names} == {*PACKAGES, wheel.name.split("-py")[0] + ".dist-info"}

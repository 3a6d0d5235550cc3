"""Deployment files stay valid and agree with the code they run.

No Docker engine or cluster is needed: compose files are checked with the
`docker-compose config` validator (Debian package ``docker-compose``),
Kubernetes manifests with the offline schemas of ``kubernetes-validate``,
KEDA objects (not in those schemas) field by field, and Dockerfiles by
parsing them against pyproject.toml, the CLI and the files in the repo.
Every ANONYMIZE_* variable a deployment sets must be one the code reads:
a misspelt name would otherwise be ignored silently.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
PACKAGES = ("anonymize", "pipeline", "models", "tasks", "workers")
#: oldest Kubernetes minor the manifests promise to work on, and the newest known
K8S_VERSIONS = ("1.29.0", None)
ENV_NAME = re.compile(r"\bANONYMIZE_[A-Z][A-Z0-9_]*")


# ----------------------------------------------------------------- helpers

def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def gpu_cpu_queues() -> tuple[str, str]:
    """GPU_QUEUE / CPU_QUEUE as tasks/config.py defines them."""
    from tasks.config import CPU_QUEUE, GPU_QUEUE

    return GPU_QUEUE, CPU_QUEUE


def known_env_names() -> set[str]:
    """Every ANONYMIZE_* name the code reads: the settings module's list (one
    per Settings field, the service variables, the others) and any literal
    name in the packages' source."""
    from pipeline.settings import env_names

    names = env_names()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(ENV_NAME.findall(path.read_text()))
    return names


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_by_kind(kind: str) -> list[dict]:
    return [d for _, d in k8s_docs() if d["kind"] == kind]


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def deployment(name: str) -> dict:
    return next(d for d in k8s_by_kind("Deployment") if d["metadata"]["name"] == name)


def gpu_deployment() -> dict:
    gpu = [d for d in k8s_by_kind("Deployment")
           if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                  for c in containers(d))]
    assert len(gpu) == 1, "exactly one Deployment should request GPUs"
    return gpu[0]


def queues_arg(command: list[str]) -> str:
    return command[command.index("--queues") + 1]


def device_arg(command: list[str]) -> str:
    return command[command.index("--device") + 1]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args(path: Path) -> dict[str, str]:
    args = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name, value)
    return args


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for word, rest in dockerfile_instructions(path):
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def exec_form(rest: str) -> list[str]:
    """Arguments of a CMD/ENTRYPOINT/HEALTHCHECK CMD in JSON exec form."""
    start = rest.index("[")
    return yaml.safe_load(rest[start:])


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `**/` any depth (also none), `*` and
    `?` within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``rel`` (or a folder above it)."""
    ignored = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


def check_anonymize_command(argv: list[str]) -> None:
    """An `anonymize ...` command line names a real subcommand and queue."""
    from anonymize.cli import COMMANDS, build_parser

    assert argv[0] in pyproject()["project"]["scripts"], argv
    assert argv[1] in COMMANDS, f"no subcommand {argv[1]!r} in anonymize.cli.COMMANDS"
    try:  # the real parser: every flag the deployment passes must exist
        build_parser(only=argv[1]).parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{' '.join(argv)}` is rejected by the anonymize command line")
    if argv[1] == "worker" and "--queues" in argv:
        assert set(queues_arg(argv).split(",")) <= set(gpu_cpu_queues()), argv


def check_celery_command(argv: list[str]) -> None:
    """``celery -A MODULE --config CONFIG …``: MODULE defines the app, and CONFIG is the
    module that configures it from the environment (the app itself reads nothing)."""
    module = argv[argv.index("-A") + 1]
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists(), f"celery -A {module}: {path.relative_to(ROOT)} missing"
    assert re.search(r"^app\s*=", path.read_text(), re.M), f"{module} defines no `app`"
    assert "--config" in argv, f"{argv}: without --config the app has no broker"
    config = argv[argv.index("--config") + 1]
    assert config == "tasks.celeryconfig", argv


def run_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (Debian package `docker-compose`)")
    # a clean environment: variables of the caller must not fill in the file
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([exe, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
                          capture_output=True, text=True, env=env, cwd=COMPOSE_DIR, timeout=120)


# --------------------------------------------------------------- compose

def test_compose_file_validates_with_example_env():
    proc = run_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "is not set" not in proc.stderr, proc.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = run_compose("config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert "REDIS_PASSWORD" in proc.stderr


def test_compose_resolved_services_have_broker_and_storage():
    proc = run_compose("config", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    for name in ("gpu-worker", "cpu-worker", "flower"):
        env = services[name]["environment"]
        assert env["ANONYMIZE_BROKER_URL"].startswith("redis://:"), name
        assert "change-me" in env["ANONYMIZE_BROKER_URL"], "password from .env goes into the URL"
    for name in ("gpu-worker", "cpu-worker"):
        env = services[name]["environment"]
        assert env["ANONYMIZE_STORAGE_URL"] == "s3://" + env_example()["S3_BUCKET"]
        assert env["ANONYMIZE_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert env["AWS_ACCESS_KEY_ID"] == env_example()["S3_WORKER_ACCESS_KEY"]


def test_compose_every_required_variable_is_in_env_example():
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required, "the compose file should refuse to run without its secrets"
    assert required <= set(env_example()), required - set(env_example())


def test_compose_gpu_worker_reserves_gpus_and_consumes_gpu_queue():
    gpu_queue, cpu_queue = gpu_cpu_queues()
    services = load_compose()["services"]
    gpu = services["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert queues_arg(gpu["command"]) == gpu_queue
    assert device_arg(gpu["command"]) == "cuda:0", "one GPU per container, seen as cuda:0"
    assert queues_arg(services["cpu-worker"]["command"]) == cpu_queue
    # the replicas of one host share the lock files that hand out GPUs
    assert any(v.endswith(":/var/lock/anonymize-gpus") for v in gpu["volumes"])


def test_compose_commands_exist():
    for name, service in load_compose()["services"].items():
        command = service.get("command")
        if not isinstance(command, list):
            continue
        if command[0] == "anonymize":
            check_anonymize_command(command)
        elif command[0] == "celery":
            check_celery_command(command)
        elif command[0] == "python":
            assert (COMPOSE_DIR / Path(command[1]).name).exists(), name


def test_compose_mounted_files_exist():
    for name, service in load_compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} missing"


def test_compose_grace_period_below_visibility_timeout():
    """Stopping a worker lets its batch finish within stop_grace_period; a
    longer grace than the visibility timeout would let Redis hand the same
    batch to a second worker while the first is still finishing it."""
    visibility = int(env_example()["ANONYMIZE_VISIBILITY_TIMEOUT"])
    for name in ("gpu-worker", "cpu-worker"):
        grace = load_compose()["services"][name]["stop_grace_period"]
        value, unit = int(grace[:-1]), grace[-1]
        seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
        assert 0 < seconds < visibility, name


def test_prometheus_scrapes_flower():
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["flower:5555"]
    assert "--port=5555" in load_compose()["services"]["flower"]["command"]


# ------------------------------------------------------------ kubernetes

def test_k8s_manifests_validate_against_kubernetes_schemas():
    import kubernetes_validate

    checked = 0
    for path, doc in k8s_docs():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        for version in K8S_VERSIONS:
            version = version or kubernetes_validate.latest_version()
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} "
                            f"(k8s {version}): {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 8


def test_k8s_validator_rejects_unknown_fields():
    """The strict validation above would catch a misspelt field."""
    import kubernetes_validate

    doc = yaml.safe_load(yaml.safe_dump(gpu_deployment()))
    doc["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= on_disk, listed - on_disk
    assert on_disk - listed == {"secret.example.yaml"}
    namespace = k8s_by_kind("Namespace")[0]["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for _, doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_k8s_keda_scales_gpu_workers_on_the_gpu_queue():
    gpu_queue, _ = gpu_cpu_queues()
    scaled = k8s_by_kind("ScaledObject")
    assert len(scaled) == 1
    so = scaled[0]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    target = gpu_deployment()
    assert so["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"]
    assert so["spec"].get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["maxReplicaCount"] >= 1
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == gpu_queue
    assert int(trigger["metadata"]["listLength"]) >= 1
    # Celery's Redis transport keeps queues in database 0 of the broker URL
    assert trigger["metadata"].get("databaseIndex", "0") == "0"
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA wants strings"

    (auth,) = k8s_by_kind("TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {r["parameter"]: r for r in auth["spec"].get("secretTargetRef", [])}
    params |= {r["parameter"]: r for r in auth["spec"].get("env", [])}
    assert {"address", "password"} <= set(params)
    secret = k8s_by_kind("Secret")[0]
    password = params["password"]
    assert password["name"] == secret["metadata"]["name"]
    assert password["key"] in secret["stringData"]
    address = params["address"]
    container = next(c for c in containers(target) if c["name"] == address["containerName"])
    assert address["name"] in {e["name"] for e in container["env"]}


def test_k8s_workers_consume_the_right_queues():
    gpu_queue, cpu_queue = gpu_cpu_queues()
    gpu = gpu_deployment()
    (container,) = containers(gpu)
    assert queues_arg(container["args"]) == gpu_queue
    assert device_arg(container["args"]) == "cuda:0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    cpu = deployment("anonymize-cpu-worker")
    assert queues_arg(containers(cpu)[0]["args"]) == cpu_queue
    for d in k8s_by_kind("Deployment"):
        for c in containers(d):
            args = c["args"]
            if args[0] == "anonymize":
                check_anonymize_command(args)
            elif args[0] == "celery":
                check_celery_command(args)


def test_k8s_grace_period_between_batch_and_visibility_timeout():
    """SIGTERM = warm shutdown; the grace must cover a batch and stay below
    the visibility timeout (see deploy/README.md)."""
    config = k8s_by_kind("ConfigMap")[0]["data"]
    visibility = int(config["ANONYMIZE_VISIBILITY_TIMEOUT"])
    for name in ("anonymize-gpu-worker", "anonymize-cpu-worker"):
        grace = deployment(name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert 300 <= grace < visibility, name


def test_k8s_every_container_has_limits_and_probes():
    for kind in ("Deployment", "StatefulSet"):
        for d in k8s_by_kind(kind):
            for c in containers(d):
                name = f"{d['metadata']['name']}/{c['name']}"
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
                assert "livenessProbe" in c, name
                assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name
            assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_k8s_secret_and_configmap_references_resolve():
    secret = k8s_by_kind("Secret")[0]
    config = k8s_by_kind("ConfigMap")[0]
    for kind in ("Deployment", "StatefulSet"):
        for d in k8s_by_kind(kind):
            for c in containers(d):
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {})
                    if "secretKeyRef" in ref:
                        assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
                        assert ref["secretKeyRef"]["key"] in secret["stringData"], env["name"]
                    if "configMapKeyRef" in ref:
                        assert ref["configMapKeyRef"]["name"] == config["metadata"]["name"]
                        assert ref["configMapKeyRef"]["key"] in config["data"], env["name"]
                    # $(VAR) expands only names defined earlier in the list or by envFrom
                    earlier = {e["name"] for e in c["env"][: c["env"].index(env)]}
                    if any("configMapRef" in s for s in c.get("envFrom", [])):
                        earlier |= set(config["data"])
                    for var in re.findall(r"\$\(([A-Z0-9_]+)\)", env.get("value", "")):
                        assert var in earlier, f"{env['name']} uses $({var}) before it is set"


# ----------------------------------------------------------- environment

def deployment_env_names() -> set[str]:
    """Every ANONYMIZE_* name set or referenced by compose, .env.example, k8s, Dockerfiles."""
    names: set[str] = set()
    names |= set(ENV_NAME.findall(COMPOSE_FILE.read_text()))
    names |= {k for k in env_example() if k.startswith("ANONYMIZE_")}
    for _, doc in k8s_docs():
        names |= set(ENV_NAME.findall(yaml.safe_dump(doc)))
    for path in DOCKERFILES:
        names |= set(ENV_NAME.findall(path.read_text()))
    for path in (DEPLOY / "docker").glob("*.sh"):
        names |= set(ENV_NAME.findall(path.read_text()))
    return names


def test_every_anonymize_variable_in_deployments_is_read_by_the_code():
    known = known_env_names()
    used = deployment_env_names()
    assert "ANONYMIZE_BROKER_URL" in used and "ANONYMIZE_STORAGE_URL" in used
    unknown = used - known
    assert not unknown, f"set in deploy/ but read nowhere in the code: {sorted(unknown)}"


def test_env_cross_check_knows_the_fixed_names():
    known = known_env_names()
    for name in ("ANONYMIZE_BROKER_URL", "ANONYMIZE_RESULT_BACKEND", "ANONYMIZE_STORAGE_URL",
                 "ANONYMIZE_S3_ENDPOINT_URL", "ANONYMIZE_VISIBILITY_TIMEOUT",
                 "ANONYMIZE_TASK_MAX_RETRIES", "ANONYMIZE_WORKER_MAX_MEMORY_MB",
                 "ANONYMIZE_DEVICE", "ANONYMIZE_PLATES", "ANONYMIZE_MODELS_DIR"):
        assert name in known, name
    assert "ANONYMIZE_NOT_A_SETTING" not in known


def test_service_settings_read_the_compose_worker_environment():
    """The worker environment compose builds parses into ServiceSettings."""
    from tasks.service import ServiceSettings

    proc = run_compose("config", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    env = yaml.safe_load(proc.stdout)["services"]["gpu-worker"]["environment"]
    service = ServiceSettings.from_env({k: str(v) for k, v in env.items()})
    assert service.broker_url.endswith("@redis:6379/0")
    assert service.result_backend.endswith("@redis:6379/1")
    assert service.storage_url == "s3://anonymize"
    assert service.s3_endpoint_url == "http://s3:8333"
    assert service.visibility_timeout == 3600


def test_flower_variables_are_flower_options():
    from flower import options  # noqa: F401  (defines the options)
    from tornado.options import options as defined

    names = set(re.findall(r"\bFLOWER_[A-Z_]+", COMPOSE_FILE.read_text()))
    names |= set(re.findall(r"\bFLOWER_[A-Z_]+", (K8S_DIR / "flower.yaml").read_text()))
    assert {"FLOWER_BASIC_AUTH", "FLOWER_TASK_RUNTIME_METRIC_BUCKETS"} <= names
    for name in names:
        option = name.removeprefix("FLOWER_").lower()
        assert {option, option.replace("_", "-")} & set(defined._options), name


# ------------------------------------------------------------ dockerfiles

@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_and_torch_are_pinned(path):
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    args = dockerfile_args(path)
    project = pyproject()["project"]
    for word, rest in dockerfile_instructions(path):
        if word != "FROM":
            continue
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if ":" not in image:  # an earlier stage
            continue
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned"
        py = re.search(r"python:(\d+\.\d+)", image)
        if py:
            assert Version(py.group(1) + ".0") in SpecifierSet(project["requires-python"])
    torch_spec = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert Version(args["TORCH_VERSION"]) in SpecifierSet(torch_spec[len("torch"):]), torch_spec
    text = path.read_text()
    assert '"torch==${TORCH_VERSION}"' in text
    for match in re.finditer(r"python(3\.\d+)\b", text):
        assert Version(match.group(1) + ".0") in SpecifierSet(project["requires-python"])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_existing_extras_and_every_package(path):
    project = pyproject()
    extras = set(project["project"]["optional-dependencies"])
    text = path.read_text()
    installs = re.findall(r'pip install [^\n]*?"?\.\[([\w,-]+)\]"?', text)
    assert installs, "the image should install the project with its extras"
    for group in installs:
        assert set(group.split(",")) <= extras, group
    assert "distributed" in {e for g in installs for e in g.split(",")}
    copied = {rest.split()[-1].strip("./") for word, rest in dockerfile_instructions(path)
              if word == "COPY" and "--from" not in rest}
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in include):
        if (ROOT / package).is_dir():
            assert package in copied, f"{path.name} does not copy package {package}/"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_existing_files_not_dockerignored(path):
    patterns = dockerignore_patterns()
    for word, rest in dockerfile_instructions(path):
        if word not in ("COPY", "ADD") or "--from" in rest:
            continue
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source}: not in the repo"
            assert not dockerignored(source.rstrip("/"), patterns), \
                f"{path.name}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for rel in (".venv", ".git", "out", ".cluster", "tests/fixtures", "deploy/compose/.env",
                "models/__pycache__/x.pyc", "clip.mp4", "sub/model.pt"):
        assert dockerignored(rel, patterns), rel
    for rel in ("pyproject.toml", "README.md", "models/registry.py", "deploy/docker/healthcheck.sh"):
        assert not dockerignored(rel, patterns), rel


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_is_non_root_with_healthcheck_and_real_commands(path):
    final = stages(path)[-1]
    words = [w for w, _ in final]
    users = [rest for w, rest in final if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must not run as root"
    assert "HEALTHCHECK" in words
    installed = {Path(shlex.split(rest)[-1]).name for w, rest in final if w == "COPY"}
    scripts = set(pyproject()["project"]["scripts"])
    for word, rest in final:
        if word == "HEALTHCHECK":
            rest = rest[rest.index("CMD"):]
        if word not in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
            continue
        argv = exec_form(rest)
        assert argv[0] in installed | scripts | {"celery"}, argv
        if argv[0] == "anonymize":
            check_anonymize_command(argv)
    for word, rest in dockerfile_instructions(path):
        if word == "RUN":
            for argv in re.findall(r"(?:^|&&|;)\s*(anonymize [^&;]+)", rest):
                check_anonymize_command(argv.split())


def test_gpu_image_fetches_models_at_build_with_npm_only_in_build_stage():
    path = DEPLOY / "docker" / "Dockerfile.gpu"
    build, runtime = stages(path)[0], stages(path)[-1]
    build_text = " ".join(rest for _, rest in build)
    assert "npm" in build_text and "nodejs" in build_text
    assert "anonymize models fetch" in build_text
    runtime_text = " ".join(rest for _, rest in runtime)
    assert "npm" not in runtime_text
    assert "/opt/models" in runtime_text and "ANONYMIZE_MODELS_DIR=/opt/models" in runtime_text
    # the entrypoint that hands out GPUs, and the one-GPU device inside
    entry = exec_form(next(rest for w, rest in runtime if w == "ENTRYPOINT"))
    assert entry == ["anonymize-gpu-entrypoint"]
    cmd = exec_form(next(rest for w, rest in runtime if w == "CMD"))
    assert device_arg(cmd) == "cuda:0"


# ------------------------------------------------------- container scripts

def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    tool = tmp_path / "bin" / name
    tool.parent.mkdir(exist_ok=True)
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)


def _entrypoint(tmp_path: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "GPU_LOCK_DIR": str(tmp_path / "locks")}
    env.update(extra_env or {})
    # the "worker" prints its GPU, then runs until its stdin closes
    cmd = ["sh", str(DEPLOY / "docker" / "gpu-entrypoint.sh"),
           "sh", "-c", 'echo "gpu=${CUDA_VISIBLE_DEVICES:-none}"; read _']
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) not installed")
def test_gpu_entrypoint_gives_each_replica_its_own_gpu(tmp_path):
    _fake_bin(tmp_path, "nvidia-smi", 'echo "GPU 0: H100 (UUID: a)"; echo "GPU 1: H100 (UUID: b)"\n')
    first, second = _entrypoint(tmp_path), _entrypoint(tmp_path)
    first_gpu, second_gpu = first.stdout.readline().strip(), second.stdout.readline().strip()
    assert {first_gpu, second_gpu} == {"gpu=0", "gpu=1"}
    third = _entrypoint(tmp_path)  # more replicas than GPUs
    _, err = third.communicate(timeout=30)
    assert third.returncode == 1 and "all 2 GPUs" in err
    # a replica that exits frees its GPU for the next one
    first.stdin.close()
    first.wait(timeout=30)
    fourth = _entrypoint(tmp_path)
    assert fourth.stdout.readline().strip() == first_gpu
    for proc in (second, fourth):
        proc.stdin.close()
        proc.wait(timeout=30)


def test_gpu_entrypoint_leaves_a_single_gpu_alone_and_honours_gpu_index(tmp_path):
    _fake_bin(tmp_path, "nvidia-smi", 'echo "GPU 0: L4 (UUID: a)"\n')
    proc = _entrypoint(tmp_path)
    out, _ = proc.communicate("", timeout=30)
    assert out.strip() == "gpu=none"
    proc = _entrypoint(tmp_path, {"GPU_INDEX": "3"})
    out, _ = proc.communicate("", timeout=30)
    assert out.strip() == "gpu=3"


def worker_node_name(queues: str, monkeypatch) -> str:
    """The Celery node name `anonymize worker --queues QUEUES` takes on host pod-7."""
    import socket

    from celery.signals import worker_process_init

    import workers.main
    from tasks.app import app

    captured: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", captured.append)
    monkeypatch.setattr(socket, "gethostname", lambda: "pod-7")
    monkeypatch.setattr(worker_process_init, "connect", lambda *a, **k: None)
    monkeypatch.setenv("ANONYMIZE_WORKER_DEVICE", "")  # restored after the test
    workers.main.run_worker(queues)
    argv = captured[0]
    return argv[argv.index("--hostname") + 1]


def test_healthcheck_pings_only_this_containers_node(tmp_path, monkeypatch):
    _fake_bin(tmp_path, "celery", 'echo "$@" > "$ARGS_FILE"\n')
    _fake_bin(tmp_path, "hostname", "echo pod-7\n")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run(["sh", str(DEPLOY / "docker" / "healthcheck.sh")], env=env, check=True,
                   timeout=30)
    argv = (tmp_path / "args").read_text().split()
    check_celery_command(["celery", *argv])
    assert argv[argv.index("inspect") + 1] == "ping"
    nodes = argv[argv.index("--destination") + 1].split(",")
    assert all(n.endswith("@pod-7") for n in nodes), "never another container's node"
    # every queue set the deployments run answers to one of the pinged names
    gpu_queue, cpu_queue = gpu_cpu_queues()
    for queues in (gpu_queue, cpu_queue, f"{gpu_queue},{cpu_queue}"):
        assert worker_node_name(queues, monkeypatch) in nodes, queues

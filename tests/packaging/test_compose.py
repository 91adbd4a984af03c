"""Static checks of docker-compose.yml (no Docker engine needed): it parses, everything it
builds from or mounts exists, and the services agree with each other and the images."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.packaging.helpers import (
    BACKEND_DOCKERFILE,
    COMPOSE_FILE,
    compose_variables,
    healthcheck_command,
    interpolate,
    parse_dockerfile,
)

COMPOSE_DIR = COMPOSE_FILE.parent
# Bind sources that live outside the repository on purpose, by container target. Each must
# be overridable through an environment variable.
EXTERNAL_BIND_TARGETS = {("train", "/data"), ("train-gpu", "/data")}
BACKEND_SETTINGS = {"MODEL_DIR", "MAX_UPLOAD_MB", "CORS_ORIGINS", "INFERENCE_BACKEND"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _binds(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Bind mounts in long form (short `src:dst[:ro]` strings are converted)."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            if not source.startswith((".", "/", "$", "~")):
                continue  # a named volume
            mount = {"type": "bind", "source": source, "target": target}
            mount["read_only"] = len(parts) > 2 and "ro" in parts[2].split(",")
            result.append(mount)
        elif volume.get("type") == "bind":
            result.append(volume)
    return result


def _host_path(source: str) -> Path:
    return (COMPOSE_DIR / interpolate(source)).resolve()


def _env(service: dict[str, Any]) -> dict[str, str | None]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = [item.partition("=") for item in environment]
        return {k: (v if sep else None) for k, sep, v in pairs}
    return {k: (None if v is None else str(v)) for k, v in environment.items()}


def test_compose_parses_with_the_expected_services(services):
    assert set(services) >= {"backend", "tfserving", "train", "train-gpu"}
    assert "profiles" not in services["backend"], "`docker compose up` starts the backend"
    assert services["tfserving"]["profiles"] == ["tfserving"]
    assert services["train"]["profiles"] == ["train"]
    assert services["train-gpu"]["profiles"] == ["train-gpu"]


def test_build_contexts_and_dockerfiles_exist(services):
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(built) >= {"backend", "train", "train-gpu"}
    for name, build in built.items():
        build = {"context": build} if isinstance(build, str) else build
        context = _host_path(build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} is missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        assert "image" in services[name], f"{name}: name the built image"


def test_bind_mount_sources_exist(services):
    for name, service in services.items():
        for mount in _binds(service):
            source, target = mount["source"], mount["target"]
            if (name, target) in EXTERNAL_BIND_TARGETS:
                assert compose_variables(source), f"{name}:{target}: make {source} overridable"
                continue
            if mount.get("bind", {}).get("create_host_path"):
                assert not mount.get("read_only"), f"{name}:{target}: an output, so writable"
                continue
            host = _host_path(source)
            assert host.exists(), f"{name}: bind source {source} -> {host} does not exist"
            assert host.is_relative_to(COMPOSE_DIR.resolve()), f"{name}: {host} is outside"


def test_backend_service(services):
    backend = services["backend"]
    assert backend["build"]["dockerfile"] == "docker/backend.Dockerfile"
    assert "${PORT:-8000}:8000" in backend["ports"]
    env = _env(backend)
    assert BACKEND_SETTINGS | {"TFSERVING_URL"} <= set(env)
    assert env["INFERENCE_BACKEND"] == "${INFERENCE_BACKEND:-onnx}"  # no TensorFlow in the image
    assert interpolate(env["MAX_UPLOAD_MB"] or "") == "20"

    # MODEL_DIR points into the read-only models mount, at a bundle that exists on the host.
    model_dir = PurePosixPath(interpolate(env["MODEL_DIR"] or ""))
    mounts = [m for m in _binds(backend) if model_dir.is_relative_to(m["target"])]
    assert len(mounts) == 1, f"MODEL_DIR={model_dir} must be inside one mount"
    mount = mounts[0]
    assert mount.get("read_only") is True, "models are mounted read-only"
    bundle = _host_path(mount["source"]) / model_dir.relative_to(mount["target"])
    assert (bundle / "model_card.json").is_file(), bundle
    assert (bundle / "model.keras").is_file(), bundle


def test_backend_healthcheck_matches_the_image(services):
    check = services["backend"]["healthcheck"]
    assert check["test"][0] == "CMD"
    image_check = healthcheck_command(parse_dockerfile(BACKEND_DOCKERFILE).final)
    assert check["test"][1:] == image_check
    assert "/ready" in check["test"][-1]


def test_tfserving_serves_the_saved_model(services):
    tfs = services["tfserving"]
    image, _, tag = tfs["image"].partition(":")
    assert image == "tensorflow/serving"
    tag = interpolate(tag)
    assert re.fullmatch(r"2\.\d+\.\d+", tag), f"pin a 2.x release, not {tag!r}"

    model_name = _env(tfs)["MODEL_NAME"]
    assert model_name == "fracture"
    (mount,) = _binds(tfs)
    target = PurePosixPath(mount["target"])
    # TF Serving layout: <base>/<model name>/<numeric version>/saved_model.pb
    assert target.parent == PurePosixPath("/models", model_name) and target.name.isdigit()
    assert mount.get("read_only") is True
    host = _host_path(mount["source"])
    assert (host / "saved_model.pb").is_file() and (host / "variables").is_dir(), host

    assert "ports" not in tfs, "no published ports, so `deploy.replicas` can scale it"
    assert "8501" in {str(p) for p in tfs.get("expose", [])}
    assert "replicas" in tfs.get("deploy", {})
    assert "healthcheck" in tfs


def test_backend_reaches_tfserving_rest_predict(services):
    url = urlparse(_env(services["backend"])["TFSERVING_URL"] or "")
    assert url.scheme == "http" and url.hostname == "tfserving" and url.port == 8501
    model_name = _env(services["tfserving"])["MODEL_NAME"]
    assert url.path == f"/v1/models/{model_name}:predict"


@pytest.mark.parametrize("name", ["train", "train-gpu"])
def test_train_services_mount_data_read_only_and_runs_writable(services, name):
    train = services[name]
    assert train["build"]["dockerfile"] == "docker/train.Dockerfile"
    mounts = {m["target"]: m for m in _binds(train)}
    assert mounts["/data"].get("read_only") is True
    assert interpolate(mounts["/data"]["source"]) == "../shared/data/cervical-ct"
    assert "DATA_DIR" in compose_variables(mounts["/data"]["source"])
    assert not mounts["/runs"].get("read_only")
    assert _host_path(mounts["/runs"]["source"]) == (COMPOSE_DIR / "runs").resolve()


def test_gpu_is_reserved_only_by_train_gpu(services):
    """A GPU reservation fails on hosts without the NVIDIA runtime: `train` must work there."""
    devices = services["train-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for name, service in services.items():
        if name != "train-gpu":
            reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
            assert "devices" not in reservations, name
            assert "gpus" not in service, name


def test_interpolation_helper():
    assert interpolate("${A:-x}/${B-y}/$$C", {"A": "", "B": ""}) == "x//$C"
    assert interpolate("${PORT:-8000}:8000", {"PORT": "9000"}) == "9000:8000"


# --- profile `scale`: replicas of the API behind the nginx proxy ---------------------------

PROXY_DOCKERFILE = COMPOSE_DIR / "docker" / "proxy.Dockerfile"
PROXY_DIR = COMPOSE_DIR / "docker" / "proxy"


def test_scale_replicas_are_the_backend_without_published_ports(services):
    backend, replica = services["backend"], services["replica"]
    assert replica["profiles"] == ["scale", "pipeline"]
    assert "ports" not in replica, "no published ports: the proxy is the only way in"
    assert replica["deploy"]["replicas"] == "${REPLICAS:-2}"
    assert interpolate(replica["deploy"]["replicas"]) == "2"
    # The same image, settings, mounts, health check and hardening (one YAML anchor).
    for key in set(backend) - {"ports"}:
        assert replica[key] == backend[key], key
    assert set(replica) - set(backend) == {"profiles", "deploy", "depends_on"}
    # Profile `pipeline`: the worklist's PostgreSQL first; absent (profile `scale`) it is no
    # dependency at all.
    assert replica["depends_on"] == {"db": {"condition": "service_healthy", "required": False}}


def test_scale_proxy_service(services):
    proxy, backend = services["proxy"], services["backend"]
    assert proxy["profiles"] == ["scale", "pipeline"]
    assert proxy["build"]["dockerfile"] == "docker/proxy.Dockerfile"
    assert proxy["build"]["args"]["PYTHON_IMAGE"] == backend["build"]["args"]["PYTHON_IMAGE"]
    assert proxy["ports"] == ["${SCALE_PORT:-8080}:8080"]
    env = _env(proxy)
    assert env["PROXY_UPSTREAM_MODE"] == "dns" and env["PROXY_LISTEN"] == "8080"
    # The replicas' Docker DNS name and container port (the backend image's).
    assert env["REPLICA_HOST"] == "replica"
    assert env["REPLICA_PORT"] == backend["ports"][0].rsplit(":", 1)[1]
    # Body limits: the API's own defaults, from the same variables.
    assert env["MAX_UPLOAD_MB"] == _env(backend)["MAX_UPLOAD_MB"]
    assert interpolate(env["MAX_BATCH_MB"] or "") == "100"
    assert interpolate(env["MAX_STUDY_MB"] or "") == "512"
    assert {"MAX_BATCH_MB", "MAX_STUDY_MB"} <= set(_env(backend)), "the API takes them too"
    assert proxy["depends_on"]["replica"]["condition"] == "service_started"
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert any(str(t).split(":")[0] == "/tmp" for t in proxy["tmpfs"])


def test_proxy_image_is_debian_nginx_non_root_with_a_health_check():
    dockerfile = parse_dockerfile(PROXY_DOCKERFILE)
    assert dockerfile.global_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    final = dockerfile.final
    assert final.base == "python:3.11-slim-bookworm"
    runs = "\n".join(i.args for i in final.all("RUN"))
    assert "apt-get install" in runs and re.search(r"\bnginx\b", runs)
    user = final.last("USER")
    assert user is not None and user.args.split(":")[0] not in {"root", "0"}
    assert user.line > max(i.line for i in final.all("RUN"))
    assert "/ready" in " ".join(healthcheck_command(final))
    for copy in final.all("COPY"):
        source = copy.args.split()[0]
        assert (COMPOSE_DIR / source).is_file(), source


def test_proxy_nginx_template():
    template = (PROXY_DIR / "nginx.conf.template").read_text()
    directives = "\n".join(
        line.strip() for line in template.splitlines() if not line.strip().startswith("#")
    )
    for field in ("@LISTEN@", "@UPSTREAM_HTTP@", "@UPSTREAM@", "@MAX_UPLOAD_BYTES@",
                  "@MAX_BATCH_BYTES@", "@MAX_STUDY_BYTES@"):  # fmt: skip
        assert field in directives, field
    next_upstream = re.search(r"^proxy_next_upstream (.*);$", directives, re.M)
    assert next_upstream, "retry on another replica"
    assert {"error", "http_503"} <= set(next_upstream.group(1).split())
    assert "non_idempotent" not in directives, "a POST that reached a replica is never re-sent"
    assert "proxy_hide_header" not in directives, "Retry-After and X-Request-ID pass through"
    assert "proxy_pass http://$replicas_upstream;" in directives
    # nginx's own errors in the API's shape: 502/504 -> 503 with Retry-After, JSON bodies.
    assert "error_page 502 504 = @no_replica;" in directives
    assert "add_header Retry-After" in directives
    assert "proxy_intercept_errors" not in directives, "the replicas' own errors pass unchanged"
    # Every temp path on the tmpfs (read-only root filesystem).
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path /tmp/" in directives, kind
    entrypoint = (PROXY_DIR / "entrypoint.sh").read_text()
    assert "resolver 127.0.0.11 valid=" in entrypoint, "Docker's DNS, re-resolved"
    assert "max_fails=1 fail_timeout=" in entrypoint, "absent replica ports are skipped"


@pytest.mark.parametrize(
    "env", [{}, {"MAX_UPLOAD_MB": "20.5", "MAX_BATCH_MB": "7.25", "MAX_STUDY_MB": "1000"}]
)
def test_proxy_body_limits_are_the_apis(env: dict[str, str]) -> None:
    """The entrypoint's byte limits (its own arithmetic, run by bash) equal what the API
    allows for the same settings: one file plus the multipart framing, a batch, a study."""
    from backend.app.core.config import Settings

    script = (PROXY_DIR / "entrypoint.sh").read_text()
    limits = script[script.index("bytes() {") : script.index("case ")]
    result = subprocess.run(
        ["bash", "-c", 'set -eu\n' + limits + 'echo "$upload $batch $study"'],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    settings = Settings(**{key.lower(): float(value) for key, value in env.items()})
    assert [int(v) for v in result.stdout.split()] == [
        settings.max_single_request_bytes,
        settings.max_batch_bytes,
        settings.max_study_bytes,
    ]


# --- profile `pipeline`: broker, PostgreSQL, Orthanc, poller, workers, replicas + proxy ----

DOCKER_DIR = COMPOSE_DIR / "docker"
PIPELINE_ONLY = ("broker", "db", "pacs-poller", "pacs-broker-worker")
PACS_CONTAINERS = ("pacs-worker", "pacs-poller", "pacs-broker-worker")
# The development defaults the file allows for credentials (and nothing else literal).
DEV_SECRET = "change-me"


def _published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def test_pipeline_profile_holds_the_topology(services):
    for name in PIPELINE_ONLY:
        assert services[name]["profiles"] == ["pipeline"], name
    assert services["orthanc"]["profiles"] == ["pacs", "pipeline"]
    for name in ("replica", "proxy"):
        assert services[name]["profiles"] == ["scale", "pipeline"], name
    assert services["pacs-broker-worker"]["deploy"]["replicas"] == "${WORKERS:-2}"
    assert services["pacs-poller"]["command"] == ["python", "-m", "pacs", "poller"]
    assert "deploy" not in services["pacs-poller"], "one poller (its state file)"
    # The three PACS containers are one image with one hardening (the YAML anchor).
    first = services[PACS_CONTAINERS[0]]
    for name in PACS_CONTAINERS:
        service = services[name]
        for key in ("build", "image", "read_only", "tmpfs", "cap_drop", "security_opt",
                    "stop_grace_period", "restart"):  # fmt: skip
            assert service[key] == first[key], (name, key)
        assert service["build"]["dockerfile"] == "docker/pacs-worker.Dockerfile"
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


@pytest.mark.parametrize(
    ("name", "dockerfile", "user"),
    [
        ("broker", "broker.Dockerfile", "rabbitmq"),
        ("db", "db.Dockerfile", "postgres"),
        ("orthanc", "orthanc.Dockerfile", "orthanc"),
        ("pacs-poller", "pacs-worker.Dockerfile", "10001:10001"),
    ],
)
def test_pipeline_images_are_debian_packages_non_root_with_health_checks(
    services, name, dockerfile, user
):
    service = services[name]
    assert service["build"]["dockerfile"] == f"docker/{dockerfile}"
    parsed = parse_dockerfile(DOCKER_DIR / dockerfile)
    final = parsed.final
    last_user = final.last("USER")
    assert last_user is not None and last_user.args == user
    assert user.split(":")[0] not in {"root", "0"}
    assert healthcheck_command(final), f"{dockerfile}: no HEALTHCHECK"
    assert not re.search(r"^#\s*syntax\s*=", (DOCKER_DIR / dockerfile).read_text(), re.M), (
        "a # syntax= line makes BuildKit pull a frontend from Docker Hub"
    )
    # The same base as every other image (the local Debian stand-in where Docker Hub is out).
    base_arg = "PYTHON_IMAGE" if name == "pacs-poller" else "BASE_IMAGE"
    assert service["build"]["args"][base_arg] == "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
    assert interpolate(parsed.global_args[base_arg]) == "python:3.11-slim-bookworm"
    if name in ("broker", "db"):
        runs = "\n".join(i.args for i in final.all("RUN"))
        package = "rabbitmq-server" if name == "broker" else "postgresql-15"
        assert f"apt-get install -y --no-install-recommends {package}" in runs
        assert "rm -rf /var/lib/apt/lists/*" in runs
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert any(str(t).split(":")[0] == "/tmp" for t in service["tmpfs"])
        entrypoint = final.last("ENTRYPOINT")
        assert entrypoint is not None
        (script,) = entrypoint.exec_form() or []
        copy = next(c for c in final.all("COPY") if c.args.split()[-1] == script)
        assert os.access(COMPOSE_DIR / copy.args.split()[0], os.X_OK), "the script is executable"


def test_pipeline_ports_are_loopback_only(services):
    for name in (*PIPELINE_ONLY, "orthanc", "pacs-worker"):
        for port in _published(services[name]):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert "ports" not in services["pacs-broker-worker"], "no published ports: it scales"
    assert _published(services["broker"]) == ["127.0.0.1:${BROKER_PORT:-5672}:5672"]
    assert _published(services["db"]) == ["127.0.0.1:${DB_PORT:-5432}:5432"]
    # The poller's and the single-process worker's metrics do not collide on the host.
    assert interpolate(_published(services["pacs-poller"])[0]) != interpolate(
        _published(services["pacs-worker"])[0]
    )


def test_pipeline_credentials_come_from_the_environment(services):
    """Every credential is a `${VAR:-change-me}` (the development default the file already
    allows for PACS_PASSWORD) or passed through; none is a literal."""
    secret_keys = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN")
    for name in (*PIPELINE_ONLY, "orthanc", "pacs-worker"):
        for key, value in _env(services[name]).items():
            if not secret_keys.search(key) or value is None:
                continue
            variable = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
            assert variable and variable.group(2) == DEV_SECRET, (name, key, value)
            assert interpolate(value, {variable.group(1): "s3cret"}) == "s3cret"
    for name in ("pacs-poller", "pacs-broker-worker"):
        url = _env(services[name])["PACS_BROKER_URL"] or ""
        env = {"BROKER_USER": "u", "BROKER_PASSWORD": "s3cret"}
        assert interpolate(url, env) == "amqp://u:s3cret@broker:5672/%2F"
        assert interpolate(url, {**env, "PACS_BROKER_URL": "amqps://x"}) == "amqps://x"
    broker, db = _env(services["broker"]), _env(services["db"])
    assert broker["BROKER_USER"] == "${BROKER_USER:-cspine}"
    assert db["POSTGRES_USER"] == "${POSTGRES_USER:-cspine}"
    assert db["POSTGRES_DB"] == "${POSTGRES_DB:-cspine}"


def test_pipeline_is_ordered_by_health(services):
    healthy = {"condition": "service_healthy"}
    worker, poller = services["pacs-broker-worker"], services["pacs-poller"]
    assert worker["depends_on"]["broker"] == healthy
    assert worker["depends_on"]["proxy"] == healthy, "the API is up before the first job"
    assert poller["depends_on"]["broker"] == healthy
    for service in (worker, poller):
        assert service["depends_on"]["orthanc"] == {**healthy, "required": False}
    # Workers: the API through the proxy (its container port), no state volume; the poller
    # keeps its state file on its own volume.
    api = urlparse(_env(worker)["API_URL"] or "")
    assert (api.hostname, str(api.port)) == ("proxy", _env(services["proxy"])["PROXY_LISTEN"])
    assert "volumes" not in worker
    assert poller["volumes"] == ["pacs-poller-state:/state"]
    assert services["broker"]["volumes"] == ["broker-data:/var/lib/rabbitmq"]
    assert services["db"]["volumes"] == ["db-data:/var/lib/postgresql/data"]


def test_broker_and_db_entrypoints_take_their_settings():
    broker = (DOCKER_DIR / "broker" / "entrypoint.sh").read_text()
    assert '"${BROKER_USER:?' in broker and '"${BROKER_PASSWORD:?' in broker
    assert "default_user = $BROKER_USER" in broker and "guest" not in broker.split("set -eu")[1]
    db = (DOCKER_DIR / "db" / "entrypoint.sh").read_text()
    assert "--auth-host=scram-sha-256" in db and "--pwfile=" in db
    assert "exec postgres" in db
    for path in (DOCKER_DIR / "broker" / "entrypoint.sh", DOCKER_DIR / "db" / "entrypoint.sh"):
        result = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


PROFILE_SETS = [
    (), ("scale",), ("pacs",), ("pipeline",), ("scale", "pipeline"), ("pacs", "pipeline"),
    ("tfserving", "train", "train-gpu", "scale", "pacs", "pipeline"),
]  # fmt: skip


@pytest.mark.parametrize("host_network", [False, True], ids=["bridge", "host-network"])
@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p) or "default")
def test_docker_compose_renders_every_profile(profiles, host_network):
    """`docker compose config` (the real parser: merge keys, `!reset`, nested defaults,
    depends_on across profiles) accepts every profile combination; skipped without Compose."""
    try:
        subprocess.run(["docker", "compose", "version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("Docker Compose v2 is not installed (docker/install-tools.sh)")
    files = ["-f", str(COMPOSE_FILE)]
    if host_network:
        files += ["-f", str(COMPOSE_DIR / "docker" / "compose.host-network.yml")]
    command = ["docker", "compose", *files]
    for profile in profiles:
        command += ["--profile", profile]
    result = subprocess.run(
        [*command, "config", "--services"], capture_output=True, text=True, cwd=COMPOSE_DIR
    )
    assert result.returncode == 0, result.stderr
    rendered = set(result.stdout.split())
    assert "backend" in rendered
    if "pipeline" in profiles:
        assert {"broker", "db", "orthanc", "pacs-poller", "pacs-broker-worker"} <= rendered
        assert {"replica", "proxy"} <= rendered
    else:
        assert not {"broker", "db", "pacs-poller", "pacs-broker-worker"} & rendered

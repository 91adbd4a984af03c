"""Structural checks of the Kubernetes manifests (deploy/k8s, docs/kubernetes.md), no cluster
needed: every environment variable is a real setting of the program that reads it (and its
value passes that setting's validation), every probe is a real route of the app open
without a token, every image is one docker-compose.yml builds (or a pinned upstream one),
and every container has resources, probes and a locked-down securityContext."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import AliasChoices

from backend.app.core.config import Settings
from backend.app.core.policy import policy_of
from pacs.broker import QUEUE_DEPTH, Topology
from pacs.settings import WorkerSettings
from tests.packaging.helpers import COMPOSE_FILE, REPO_ROOT, interpolate, parse_dockerfile

K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in K8S.glob("*/kustomization.yaml") if p.parent != BASE)
DOCS = REPO_ROOT / "docs" / "kubernetes.md"
SECRET = "cspine-triage"  # created by the operator (docs/kubernetes.md), never in the files
# The images of the project (docker-compose.yml builds them) and the Dockerfile of each.
DOCKERFILES = {
    "cspine-triage/backend": REPO_ROOT / "docker" / "backend.Dockerfile",
    "cspine-triage/pacs-worker": REPO_ROOT / "docker" / "pacs-worker.Dockerfile",
}
# Upstream images (not built by the project), pinned, with the variables their entrypoints
# document (hub.docker.com/_/rabbitmq, hub.docker.com/_/postgres).
UPSTREAM_ENV = {
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"},
}
# Containers whose root filesystem stays writable, and why (docs/kubernetes.md).
WRITABLE_ROOT = {"cspine-rabbitmq/rabbitmq": "not checked that the image writes only its volume"}
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|_PASS$|SECRET|DATABASE_URL|BROKER_URL")
# Idle RSS of one API process, measured (docs/benchmarks.md: 376-432 MiB).
API_IDLE_RSS_MIB = 432


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _base_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _documents(BASE / name)]


DOCUMENTS = _base_documents()
WORKLOADS = [doc for doc in DOCUMENTS if doc["kind"] in ("Deployment", "StatefulSet")]
CONFIGMAPS = {
    doc["metadata"]["name"]: doc["data"] for doc in DOCUMENTS if doc["kind"] == "ConfigMap"
}


def _containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in WORKLOADS:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


CONTAINERS = list(_containers())


def _id(item: tuple[dict[str, Any], dict[str, Any]]) -> str:
    return f"{item[0]['metadata']['name']}/{item[1]['name']}"


def _repository(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def _env_names(container: dict[str, Any]) -> dict[str, str | None]:
    """Each variable the container gets, with its literal value (None: from the Secret);
    ConfigMaps named by envFrom included."""
    names: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        names.update(CONFIGMAPS[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        names[item["name"]] = item.get("value")
    return names


def _setting_env_names(model: type[WorkerSettings] | type[Settings]) -> set[str]:
    """The environment variable names a pydantic-settings class reads."""
    prefix = str(model.model_config.get("env_prefix", "")).upper()
    names = set()
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(prefix + name.upper())
    return names


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    raise AssertionError(f"memory quantity {quantity!r}: use Ki, Mi or Gi")


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _compose_images() -> set[str]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {interpolate(s["image"]) for s in services.values() if "image" in s}


def test_every_manifest_is_in_the_kustomization_and_namespace_free() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for doc in DOCUMENTS:
        assert "namespace" not in doc["metadata"], doc["metadata"]  # kubectl -n / an overlay
    assert OVERLAYS, "the queue-depth overlay"


def test_no_secret_in_the_manifests() -> None:
    """No Secret object; every credential-like variable comes from the Secret, and every key
    taken from it is one docs/kubernetes.md tells the operator to create."""
    docs = DOCS.read_text()
    files = [*BASE.glob("*.yaml"), *K8S.glob("*/*.yaml")]
    assert all(doc.get("kind") != "Secret" for path in files for doc in _documents(path))
    keys = set()
    for workload, container in CONTAINERS:
        for item in container.get("env", []):
            if SECRET_NAME.search(item["name"]):
                assert "value" not in item, (_id((workload, container)), item["name"])
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                assert ref["name"] == SECRET
                keys.add(ref["key"])
    for values in CONFIGMAPS.values():
        assert not any(SECRET_NAME.search(name) for name in values), values
    assert keys >= {"database-url", "broker-url", "pacs-api-token", "postgres-password"}
    for key in keys:
        assert f"--from-literal={key}=" in docs, f"docs/kubernetes.md: how to create {key}"


@pytest.mark.parametrize("item", CONTAINERS, ids=_id)
def test_image_is_built_by_compose_or_a_pinned_upstream_one(
    item: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    image = item[1]["image"]
    repository = _repository(image)
    if repository.startswith("cspine-triage/"):
        assert image in _compose_images(), f"{image}: not as docker-compose.yml names it"
        assert repository in DOCKERFILES
    else:
        assert repository in UPSTREAM_ENV, f"{image}: an image neither compose nor listed"
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin a version"


def test_kustomization_images_are_the_compose_images() -> None:
    images = yaml.safe_load((BASE / "kustomization.yaml").read_text())["images"]
    used = {_repository(container["image"]) for _, container in CONTAINERS}
    for entry in images:
        assert f"{entry['name']}:{entry['newTag']}" in _compose_images()
    assert {entry["name"] for entry in images} == {r for r in used if r in DOCKERFILES}


@pytest.mark.parametrize("item", CONTAINERS, ids=_id)
def test_env_names_are_real_settings_with_valid_values(
    item: tuple[dict[str, Any], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each name is read by the program in the image; the literal values (the Secret's
    stood in for) pass that program's settings validation."""
    workload, container = item
    env = _env_names(container)
    repository = _repository(container["image"])
    stand_ins = {  # shaped as docs/kubernetes.md's Secret command makes them
        "DATABASE_URL": "postgresql+psycopg://triage:x@cspine-postgres:5432/triage",
        "PACS_BROKER_URL": "amqp://cspine:x@cspine-rabbitmq:5672/%2F",
        "AUTH_TOKEN_HASHES": "0" * 64,
    }
    model: type[WorkerSettings] | type[Settings] | None = {
        "cspine-triage/backend": Settings, "cspine-triage/pacs-worker": WorkerSettings,
    }.get(repository)  # fmt: skip
    if model is None:
        assert set(env) <= UPSTREAM_ENV[repository], _id(item)
        return
    unknown = set(env) - _setting_env_names(model)
    assert not unknown, f"{_id(item)}: not settings of {model.__name__}: {sorted(unknown)}"
    for name in _setting_env_names(model):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value if value is not None else stand_ins.get(name, "x"))
    settings = model()  # raises on a value the program would refuse
    if isinstance(settings, WorkerSettings):
        grace = settings.stop_grace_seconds
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_api_probes_are_real_open_routes() -> None:
    """Liveness /health and readiness /ready: GET routes of the served app that need no
    token (a kubelet carries none), on the port the image serves."""
    from backend.app.main import app

    open_get = {
        context.path
        for context in iter_route_contexts(app.routes)
        if isinstance(context.route, APIRoute)
        and "GET" in context.route.methods
        and (policy := policy_of(context.endpoint)) is not None
        and not policy.auth
    }
    dockerfile = parse_dockerfile(DOCKERFILES["cspine-triage/backend"]).final
    cmd = dockerfile.last("CMD")
    command = cmd.exec_form() if cmd is not None else None
    assert command is not None
    port = int(command[command.index("--port") + 1])
    (api,) = [c for _, c in CONTAINERS if _repository(c["image"]) == "cspine-triage/backend"]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": port}
    probes = {kind: api[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in [*probes.values(), api["startupProbe"]["httpGet"]]:
        assert probe["path"] in open_get, probe
        assert probe["port"] == "http"


def test_pacs_probes_are_the_metrics_server_of_the_image() -> None:
    """The poller and the workers: their probes ask the metrics server on the port the image
    sets (PACS_METRICS_PORT) at the path its HEALTHCHECK uses."""
    dockerfile = parse_dockerfile(DOCKERFILES["cspine-triage/pacs-worker"])
    image_env = dockerfile.env(dockerfile.final)
    healthcheck = dockerfile.final.last("HEALTHCHECK")
    assert healthcheck is not None
    url = re.search(r"http://[^']+", healthcheck.args)
    assert url is not None
    path = urlparse(url.group(0)).path
    pacs = [(w, c) for w, c in CONTAINERS if _repository(c["image"]) == "cspine-triage/pacs-worker"]
    assert {w["metadata"]["name"] for w, _ in pacs} == {"cspine-pacs-poller", "cspine-pacs-worker"}
    for _, container in pacs:
        env = {**image_env, **{k: v for k, v in _env_names(container).items() if v}}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": int(env["PACS_METRICS_PORT"])}
        assert env["PACS_METRICS_HOST"] == "0.0.0.0"  # reachable by the kubelet
        for kind in ("livenessProbe", "readinessProbe"):
            assert container[kind]["httpGet"] == {"path": path, "port": "metrics"}


@pytest.mark.parametrize("item", CONTAINERS, ids=_id)
def test_resources_probes_and_security_context(
    item: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    workload, container = item
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], _id(item)
    assert _cpu(resources["requests"]["cpu"]) <= _cpu(resources["limits"]["cpu"])
    assert _mib(resources["requests"]["memory"]) <= _mib(resources["limits"]["memory"])
    assert "livenessProbe" in container and "readinessProbe" in container
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    repository = _repository(container["image"])
    if repository in DOCKERFILES:  # the uid the image's USER names
        user = parse_dockerfile(DOCKERFILES[repository]).final.last("USER")
        assert user is not None
        uid, _, gid = user.args.partition(":")
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is (_id(item) not in WRITABLE_ROOT)
    if context["readOnlyRootFilesystem"]:
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, "a writable /tmp (emptyDir)"


def test_api_memory_limit_holds_the_admission_budget() -> None:
    (api,) = [c for _, c in CONTAINERS if _repository(c["image"]) == "cspine-triage/backend"]
    env = _env_names(api)
    budget = float(env["MEMORY_BUDGET_MB"] or Settings.model_fields["memory_budget_mb"].default)
    assert _mib(api["resources"]["limits"]["memory"]) >= API_IDLE_RSS_MIB + budget
    assert int(env["ONNX_THREADS"] or 0) == _cpu(api["resources"]["limits"]["cpu"])


def test_services_and_urls_reach_what_they_name() -> None:
    """Each Service selects a workload and names one of its ports; the workers' API URL is
    the API Service; the poller is one, with its state file on its volume."""
    services = {d["metadata"]["name"]: d for d in DOCUMENTS if d["kind"] == "Service"}
    for name, service in services.items():
        selector = service["spec"]["selector"].items()
        (workload,) = [
            w for w in WORKLOADS if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}  # fmt: skip
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"]), name
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] == name
    api = urlparse(CONFIGMAPS["cspine-pacs"]["PACS_API_URL"])
    assert api.hostname in services
    assert api.port in {p["port"] for p in services[str(api.hostname)]["spec"]["ports"]}
    (poller,) = [w for w in WORKLOADS if w["metadata"]["name"] == "cspine-pacs-poller"]
    assert poller["kind"] == "StatefulSet" and poller["spec"]["replicas"] == 1
    (container,) = poller["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "pacs", "poller"]
    state_db = Path(str(_env_names(container)["PACS_STATE_DB"]))
    assert str(state_db.parent) in {m["mountPath"] for m in container["volumeMounts"]}


def _hpas(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == "HorizontalPodAutoscaler"}


def test_autoscalers_target_deployments_with_cpu_requests() -> None:
    hpas = _hpas(DOCUMENTS)
    assert "cspine-pacs-worker" in hpas
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        (workload,) = [w for w in WORKLOADS if w["metadata"]["name"] == target["name"]]
        assert workload["kind"] == target["kind"] == "Deployment"
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu"
                   for m in hpa["spec"]["metrics"])  # fmt: skip
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert "cpu" in container["resources"]["requests"]  # Utilization needs it


def test_queue_depth_overlay_names_the_pollers_gauge() -> None:
    """The External metric is the gauge the poller exports, for the series queue the
    ConfigMap's PACS_BROKER_QUEUE names, and CPU stays beside it."""
    overlay = K8S / "queue-autoscaling"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../base"]
    (patch,) = [_documents(overlay / p["path"])[0] for p in kustomization["patches"]]
    assert patch["metadata"]["name"] in _hpas(DOCUMENTS)
    metrics = {m["type"]: m for m in patch["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    external = metrics["External"]["external"]
    assert external["metric"]["name"] == QUEUE_DEPTH.describe()[0].name
    queue = Topology(CONFIGMAPS["cspine-pacs"]["PACS_BROKER_QUEUE"], 1).series
    assert external["metric"]["selector"]["matchLabels"] == {"queue": queue}
    assert external["target"]["type"] == "AverageValue"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_kustomization_builds(directory: Path) -> None:
    """``kubectl kustomize`` (offline) renders it: the files and the patch fit together."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert len(kinds) == len(DOCUMENTS)
    assert all(doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cspine-triage"
               for doc in yaml.safe_load_all(rendered.stdout) if doc)  # fmt: skip


# The Kubernetes versions the manifests are checked against (the oldest still served by the
# big clouds, and a current one); strict: a misspelt or unknown field is an error.
K8S_VERSIONS = ["1.30.0", "1.33.0"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    """Each object against the API schema of that Kubernetes version (``kubernetes-validate``,
    which bundles the schemas: no cluster, no network)."""
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_wrong_field_is_refused_by_the_schema_check(version: str) -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    deployment = next(doc for doc in DOCUMENTS if doc["kind"] == "Deployment")
    spec = deployment["spec"]
    for broken in ({**spec, "replica": 2}, {**spec, "replicas": "two"}):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate({**deployment, "spec": broken}, version, strict=True)

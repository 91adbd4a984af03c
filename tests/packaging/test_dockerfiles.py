"""Static checks of the Dockerfiles and .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import glob
import json
import re
import subprocess
import tomllib

import pytest

from tests.load.soak import UVICORN_FLAGS
from tests.packaging.helpers import (
    BACKEND_DOCKERFILE,
    MODEL_BUNDLE,
    REPO_ROOT,
    TRAIN_DOCKERFILE,
    Dockerfile,
    DockerIgnore,
    Stage,
    healthcheck_command,
    parse_copy,
    parse_dockerfile,
)

DOCKERFILES = [BACKEND_DOCKERFILE, TRAIN_DOCKERFILE]
UVICORN_CMD = ["uvicorn", "backend.app.main:app", "--host", "0.0.0.0", "--port", "8000",
               *UVICORN_FLAGS]  # fmt: skip


@pytest.fixture(scope="module")
def backend() -> Dockerfile:
    return parse_dockerfile(BACKEND_DOCKERFILE)


@pytest.fixture(scope="module")
def train() -> Dockerfile:
    return parse_dockerfile(TRAIN_DOCKERFILE)


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore.load()


def _runs(stage: Stage) -> str:
    return "\n".join(i.args for i in stage.all("RUN"))


def _python_minor() -> str:
    spec = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    found = re.search(r">=\s*(\d+\.\d+)", spec)
    assert found, spec
    return found.group(1)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_build_context(path, ignore):
    """Every COPY source is in the repo (the build context is its root) and not dockerignored;
    every COPY --from names an earlier stage."""
    dockerfile = parse_dockerfile(path)
    for stage in dockerfile.stages:
        earlier = {s.name for s in dockerfile.stages[: stage.index] if s.name}
        assert not stage.all("ADD"), f"{path.name}: use COPY, not ADD"
        for instruction in stage.all("COPY"):
            copy = parse_copy(instruction)
            where = f"{path.name}:{instruction.line}"
            if "from" in copy.flags:
                assert copy.flags["from"] in earlier, f"{where}: unknown stage {copy.flags}"
                continue
            for source in copy.sources:
                matches = glob.glob(source.rstrip("/") or ".", root_dir=REPO_ROOT)
                assert matches, f"{where}: COPY source {source!r} is not in the repository"
                for match in matches:
                    assert not ignore.excluded(match), f"{where}: {match} is in .dockerignore"


def test_dockerignore_keeps_what_the_images_need_and_drops_the_rest(ignore):
    needed = [
        "requirements.txt",
        "backend/app/main.py",
        "ml_model/train.py",
        "ml_model/models/default/model_card.json",
        "ml_model/models/default/model.keras",
        "ml_model/models/default/saved_model/saved_model.pb",
        "frontend/package.json",
        "frontend/package-lock.json",
        "frontend/index.html",
        "frontend/src/main.tsx",
        "frontend/vite.config.ts",
    ]
    for path in needed:
        assert not ignore.excluded(path), f"{path} must reach the build context"
    dropped = [
        ".venv/bin/python",
        ".git/HEAD",
        "frontend/node_modules/vite/package.json",
        "frontend/dist/index.html",
        "runs/custom/model.keras",
        "test-output/x.png",
        "ml_model/__pycache__/train.cpython-311.pyc",
        ".pytest_cache/README.md",
        "requirements-dev.txt",
        "tests/conftest.py",
    ]
    for path in dropped:
        assert ignore.excluded(path), f"{path} should be left out of the build context"


def test_backend_has_node_builder_and_slim_runtime_stages(backend):
    node = [s for s in backend.stages if s.base.startswith("node:")]
    assert len(node) == 1, "one node stage builds the web app"
    runs = _runs(node[0])
    assert "npm ci" in runs and "npm run build" in runs
    engines = json.loads((REPO_ROOT / "frontend" / "package.json").read_text())["engines"]
    wanted_major = int(re.search(r"(\d+)", engines["node"]).group(1))  # type: ignore[union-attr]
    node_major = int(re.search(r"node:(\d+)", node[0].base).group(1))  # type: ignore[union-attr]
    assert node_major >= wanted_major, f"{node[0].base} vs engines.node {engines['node']}"

    final = backend.final
    assert re.fullmatch(rf"python:{re.escape(_python_minor())}-slim(-\w+)?", final.base)
    copies = [parse_copy(i) for i in final.all("COPY")]
    from_node = [c for c in copies if c.flags.get("from") == node[0].name]
    assert any("dist" in src for c in from_node for src in c.sources), "built SPA is copied"
    assert any(c.dest.rstrip("/").endswith("frontend/dist") for c in from_node)
    builder_copies = [c for c in copies if c.flags.get("from") not in (None, node[0].name)]
    assert any("/opt/venv" in c.sources for c in builder_copies), "venv comes from the builder"
    for source in ("ml_model/", "backend/"):
        assert any(source in c.sources for c in copies if "from" not in c.flags), source


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_runs_as_non_root(path):
    final = parse_dockerfile(path).final
    user = final.last("USER")
    assert user is not None, f"{path.name}: the runtime stage needs a USER"
    name = user.args.split(":")[0].strip()
    assert name not in {"root", "0", ""}, f"{path.name}: runs as {user.args!r}"
    # USER comes after the last RUN that needs root and before CMD/ENTRYPOINT.
    assert user.line > max(i.line for i in final.all("RUN"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_dev_tooling_in_images(path):
    dockerfile = parse_dockerfile(path)
    instructions = [i.args for stage in dockerfile.stages for i in stage.instructions]
    assert not any("requirements-dev" in args for args in instructions)
    install = _runs(dockerfile.stages[-2])
    assert "-r /tmp/requirements" in install  # the builder installs the runtime pins only
    final_runs = _runs(dockerfile.final)
    assert "pip install" not in final_runs, "the runtime stage installs nothing itself"
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "schemathesis", "ipykernel"):
        assert not re.search(rf"\b{tool}\b", install + final_runs), tool


def test_runtime_requirements_hold_no_dev_tools():
    runtime = (REPO_ROOT / "requirements.txt").read_text()
    assert not re.search(r"^-r", runtime, re.M)
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "schemathesis", "ipykernel"):
        assert not re.search(rf"^{tool}\b", runtime, re.M | re.I), tool


def test_backend_image_serves_without_tensorflow(backend):
    """The API runs ONNX Runtime (the default backend, Grad-CAM included): the runtime pins
    (requirements.txt, which the builder and `make run` install) name no TensorFlow or Keras;
    training's pins (requirements-train.txt) add them."""
    runs = _runs(backend.stage("builder"))
    assert "pip install -r /tmp/requirements.txt" in runs
    pins = (REPO_ROOT / "requirements.txt").read_text()
    assert re.search(r"^onnxruntime==\d", pins, re.M), "the serving runtime is pinned"
    heavy = [
        line for line in pins.splitlines() if re.match(r"(tensorflow|keras|tf2onnx)", line, re.I)
    ]
    assert not heavy, f"the runtime pins would install: {heavy}"
    train = (REPO_ROOT / "requirements-train.txt").read_text()
    assert re.search(r"^tensorflow-cpu==\d", train, re.M) and re.search(r"^keras==\d", train, re.M)


def _pip_requirements(target: str) -> list[str]:
    """The requirement files `make TARGET` installs into a fresh venv (a dry run)."""
    dry = subprocess.run(
        ["make", "-n", "-B", target, "VENV=/nonexistent-venv"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.findall(r"pip install .*-r (\S+)", dry)


@pytest.mark.parametrize(
    ("target", "wanted"),
    [("run", "requirements.txt"), ("serve", "requirements.txt"), ("lint", "requirements-dev.txt")],
)
def test_make_run_installs_the_runtime_pins_only(target: str, wanted: str):
    """`make run` and `make serve` set up the venv from requirements.txt alone; `make test`
    (lint, test-python) from requirements-dev.txt."""
    assert _pip_requirements(target) == [wanted]


def test_backend_runtime_contract(backend):
    final = backend.final
    expose = final.last("EXPOSE")
    assert expose is not None and expose.args.split() == ["8000"]
    cmd = final.last("CMD")
    assert cmd is not None and cmd.exec_form() == UVICORN_CMD
    assert final.last("ENTRYPOINT") is None
    env = backend.env(final)
    assert env["MODEL_DIR"] == "/models/default"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_backend_healthcheck_probes_ready_with_python(backend):
    command = healthcheck_command(backend.final)
    assert command[:2] == ["python", "-c"], "slim has no curl: the check is a python one-liner"
    assert "http://127.0.0.1:8000/ready" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_backend_bakes_the_default_model_as_fallback(backend):
    """Without a volume on /models the image still serves: /models/default is the bundle."""
    assert (MODEL_BUNDLE / "model_card.json").is_file()
    runs = _runs(backend.final)
    link = re.search(r"ln -s (\S+) /models/default", runs)
    assert link, "the runtime stage provides /models/default"
    copies = [parse_copy(i) for i in backend.final.all("COPY")]
    ml_copy = next(c for c in copies if "ml_model/" in c.sources)
    relative = link.group(1).removeprefix(ml_copy.dest.rstrip("/") + "/")
    assert (REPO_ROOT / "ml_model" / relative / "model_card.json").is_file(), relative


def test_train_image_swaps_only_the_tensorflow_package(train):
    runs = _runs(train.stages[0])
    assert "s/^tensorflow-cpu==/${TENSORFLOW_PACKAGE}==/" in runs
    arg = next(i for i in train.stages[0].all("ARG") if i.args.startswith("TENSORFLOW_PACKAGE"))
    assert "tensorflow[and-cuda]" in arg.args
    pins = (REPO_ROOT / "requirements-train.txt").read_text()
    assert re.search(r"^tensorflow-cpu==\d", pins, re.M), "the sed needs this pin"
    assert "requirements-train.txt" in runs.split("sed -i", 1)[1].split("&&", 1)[0]
    assert re.fullmatch(rf"python:{re.escape(_python_minor())}-slim(-\w+)?", train.final.base)


def test_train_entrypoint_reads_data_and_writes_runs(train):
    final = train.final
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None
    assert entrypoint.exec_form() == ["python", "-m", "ml_model.train", "--data", "/data"]
    workdir = final.last("WORKDIR")
    # The CLI's default --out is runs/<arch>, relative: from / it lands in /runs.
    assert workdir is not None and workdir.args == "/"
    assert train.env(final)["PYTHONPATH"] == "/app"

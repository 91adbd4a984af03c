"""Two CPU workers on loopback (TF_CONFIG, MultiWorkerMirroredStrategy) run a tiny stage-1
fit of the RSNA slice model together: both finish, and their weights are the same (the
gradients were all-reduced), though each streamed its own draw of slices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_studies(seed: int = 0, count: int = 4, slices: int = 10, size: int = 32) -> dict[str, Any]:
    """In-memory studies with the cache's fields: some fracture slices, some levels."""
    rng = np.random.default_rng(seed)
    studies = {}
    for k in range(count):
        label = np.zeros(slices, np.int8)
        if k % 2:
            label[3:6] = 1
        levels = np.zeros((slices, 7), np.uint8)
        levels[:, k % 7] = 1
        studies[f"study{k}"] = SimpleNamespace(
            pixels=rng.integers(0, 255, (slices, size, size)).astype(np.uint8),
            slice_label=label,
            levels=levels,
            levels_known=k < 2,
            spacing_mm=1.0,
            study_labels=np.array([k % 2] + [0] * 7, np.float32),
        )
    return studies


def run_worker(out: str) -> None:
    """One worker's part (run in a subprocess with TF_CONFIG set)."""
    from ml_model.training.distribute import is_chief, make_strategy, worker_index
    from ml_model.training.train_rsna import MemorySource, RsnaConfig, fit_slice_stage

    strategy = make_strategy("multiworker")
    config = RsnaConfig(arch="custom", size=32, epochs=2, batch_size=4, embedding=4,
                        context_mm=1.0, progress=False)  # fmt: skip
    studies = tiny_studies()
    work = Path(out) / f"worker-{worker_index()}"
    work.mkdir(parents=True)
    fit = fit_slice_stage(config, MemorySource(studies), sorted(studies), strategy, work,
                          "stage1-test")  # fmt: skip
    # Trainable weights only: batch-norm statistics are each worker's own.
    weights = [np.asarray(w) for w in fit.model.trainable_weights]
    result = {
        "index": worker_index(),
        "chief": is_chief(),
        "replicas": strategy.num_replicas_in_sync,
        "loss": fit.history["loss"],
        "checksum": float(sum(np.abs(w).sum() for w in weights)),
        "slices_per_second": fit.slices_per_second,
        "kept": (work / "stage1-test.weights.h5").is_file(),
    }
    (Path(out) / f"result-{worker_index()}.json").write_text(json.dumps(result))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_cpu_workers_fit_stage_one_together(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    for index in range(2):
        env = dict(os.environ)
        env.update(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            CUDA_VISIBLE_DEVICES="",
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="2",
        )
        code = "import sys; from tests.ml_model.test_rsna_distributed import run_worker; " \
               "run_worker(sys.argv[1])"  # fmt: skip
        log = (tmp_path / f"worker-{index}.log").open("w")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(tmp_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        codes = [p.wait(timeout=240) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    tails = "\n".join((tmp_path / f"worker-{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], tails
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(2)]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["replicas"] == 2 for r in results)
    assert all(len(r["loss"]) == 2 and np.isfinite(r["loss"]).all() for r in results)
    assert all(r["kept"] for r in results)
    assert len(results[0]["slices_per_second"]) == 2
    # Synchronous training: both workers hold the same trainable weights.
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])

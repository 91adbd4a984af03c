"""With INFERENCE_BACKEND=onnx (the default) the API starts, serves and answers — single,
batch, study, report and explain=true — without ever importing TensorFlow or Keras.

A fresh interpreter (this test process has TensorFlow loaded already) runs the production
app in-process and reports which of those modules it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_model.config import DEFAULT_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from pathlib import Path

from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.main import create_app

png = Path(sys.argv[1]).read_bytes()
study = Path(sys.argv[2]).read_bytes()
settings = Settings(model_dir=sys.argv[3], inference_backend="onnx", frontend_dist="/nonexistent")
status = {}
with TestClient(create_app(settings)) as client:
    status["ready"] = client.get("/ready").status_code
    status["predict"] = client.post("/predict", files={"file": ("a.png", png)}).status_code
    explained = client.post("/predict", params={"explain": "true"}, files={"file": ("a.png", png)})
    status["explain"] = explained.status_code
    status["heatmap"] = bool(explained.json().get("heatmap_png_base64"))
    status["batch"] = client.post(
        "/predict/batch", files=[("files", ("a.png", png)), ("files", ("b.png", png))]
    ).status_code
    status["study"] = client.post(
        "/predict/study", files=[("files", ("series.zip", study, "application/zip"))]
    ).status_code
    report = client.post("/report", files=[("files", ("series.zip", study, "application/zip"))])
    status["report"] = report.status_code
heavy = ("tensorflow", "keras", "tf2onnx", "tf_keras")
status["imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
print("RESULT " + json.dumps(status))
"""


def test_the_onnx_backend_serves_without_tensorflow() -> None:
    png, study = REPO_ROOT / "samples" / "CT_small.png", REPO_ROOT / "samples" / "series.zip"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(png), str(study), str(DEFAULT_MODEL_DIR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    status = json.loads(lines[-1].removeprefix("RESULT "))
    assert status["imported"] == [], f"imported on the serving path: {status['imported']}"
    for route in ("ready", "predict", "explain", "batch", "study", "report"):
        assert status[route] == 200, (route, status)
    assert status["heatmap"]

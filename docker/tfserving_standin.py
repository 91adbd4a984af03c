"""A stand-in for TF Serving's REST API, for machines that cannot pull tensorflow/serving.

NOT TensorFlow Serving. It answers the part of TF Serving's REST API that the backend's
``INFERENCE_BACKEND=tfserving`` client uses, by running the exported SavedModel's signature
with TensorFlow (the same graph TF Serving would run):

- ``GET  /v1/models/<name>[/versions/<v>]``  model status (``AVAILABLE`` once loaded)
- ``POST /v1/models/<name>[/versions/<v>]:predict``  ``{"signature_name", "instances"}``
  (row format) or ``{"signature_name", "inputs"}`` (columnar) -> ``{"predictions"}`` /
  ``{"outputs"}``; errors as ``{"error": "..."}`` with HTTP 400/404

The model is found as TF Serving finds it: ``$MODEL_BASE_PATH/$MODEL_NAME/<version>/``
(highest numeric version). Port: ``$REST_API_PORT`` (default 8501). `make test-docker` runs
it from the backend image (docker/compose.tfserving-standin.yml) to test the backend's side
of the TF Serving profile; the tensorflow/serving image itself is not run there.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

MODEL_NAME = os.environ.get("MODEL_NAME", "model")
BASE_PATH = Path(os.environ.get("MODEL_BASE_PATH", "/models"))
PORT = int(os.environ.get("REST_API_PORT", "8501"))
ROUTE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?$")


class Model:
    def __init__(self, name: str, base: Path) -> None:
        versions = sorted(
            (int(p.name) for p in (base / name).iterdir() if p.name.isdigit()), reverse=True
        )
        if not versions:
            raise SystemExit(f"no numeric version folder under {base / name}")
        self.name, self.version = name, versions[0]
        self.loaded = tf.saved_model.load(str(base / name / str(self.version)))
        self.signatures = dict(self.loaded.signatures)
        self.lock = threading.Lock()

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        signature_name = body.get("signature_name", "serving_default")
        if signature_name not in self.signatures:
            raise ValueError(f'Serving signature name: "{signature_name}" not found')
        function = self.signatures[signature_name]
        specs = function.structured_input_signature[1]
        row = "instances" in body
        if row == ("inputs" in body):
            raise ValueError("the request needs exactly one of 'instances' and 'inputs'")
        data = body["instances"] if row else body["inputs"]
        if row and data and isinstance(data[0], dict):
            columns = {k: [instance[k] for instance in data] for k in specs}
        elif isinstance(data, dict):
            columns = data
        else:
            if len(specs) != 1:
                raise ValueError("unnamed values need a signature with exactly one input")
            columns = {next(iter(specs)): data}
        tensors = {
            key: tf.constant(np.asarray(columns[key]), dtype=spec.dtype)
            for key, spec in specs.items()
        }
        with self.lock:
            outputs = {k: v.numpy().tolist() for k, v in function(**tensors).items()}
        if len(outputs) == 1:
            only = next(iter(outputs.values()))
            return {"predictions": only} if row else {"outputs": only}
        if row:
            count = len(next(iter(outputs.values())))
            return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(count)]}
        return {"outputs": outputs}


class Handler(BaseHTTPRequestHandler):
    model: Model
    server_version = "tfserving-standin/1"

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, want_predict: bool) -> bool:
        match = ROUTE.match(self.path.split("?", 1)[0])
        if not match or bool(match.group(3)) != want_predict:
            self._send(404, {"error": f"Malformed request: {self.command} {self.path}"})
            return False
        name, version = match.group(1), match.group(2)
        if name != self.model.name or (version and int(version) != self.model.version):
            self._send(404, {"error": f"Servable not found for request: {name} {version or ''}"})
            return False
        return True

    def do_GET(self) -> None:
        if self._route(want_predict=False):
            status = {"error_code": "OK", "error_message": ""}
            version = {"version": str(self.model.version), "state": "AVAILABLE", "status": status}
            self._send(200, {"model_version_status": [version]})

    def do_POST(self) -> None:
        if not self._route(want_predict=True):
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
            self._send(200, self.model.predict(body))
        except (ValueError, KeyError, TypeError, tf.errors.OpError) as exc:
            self._send(400, {"error": f"{type(exc).__name__}: {exc}"})

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"tfserving-standin: {format % args}\n")


def main() -> None:
    Handler.model = Model(MODEL_NAME, BASE_PATH)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    print(
        f"tfserving-standin: serving {MODEL_NAME} version {Handler.model.version} "
        f"(signatures {sorted(Handler.model.signatures)}) on :{PORT}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()

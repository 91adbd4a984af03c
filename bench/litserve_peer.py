"""The peer a user would write in an afternoon: LitServe + ONNX Runtime on the bundle's
``model.onnx``, LitServe's own batching (16 images, 2 ms), the same session settings as the
product (optimisation ALL, threads = CPUs, spinning off), PIL decode + resize.

Started by the serving benchmark next to the product; not part of the product.
    python -m bench.litserve_peer --port 8200 [--model ml_model/models/default]
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort
from PIL import Image


class FractureAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_dir = Path(model_dir)

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.size = int(self.session.get_inputs()[0].shape[1])
        card = json.loads((self.model_dir / "model_card.json").read_text())
        self.threshold = card["operating_points"]["sensitive"]["threshold"]
        self.gate_threshold = card["gate"]["threshold"]

    # Unannotated on purpose: LitServe builds the endpoint from this signature (a starlette
    # Request, its multipart form parsed by LitServe).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        upload = request["file"]
        data = upload.file.read() if hasattr(upload, "file") else upload
        gray = Image.open(io.BytesIO(data)).convert("L")
        gray = gray.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.repeat(np.asarray(gray)[..., np.newaxis], 3, axis=-1)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, images: np.ndarray) -> list[tuple[float, float]]:
        probability, ct_logit = self.session.run(["probability", "ct_logit"], {"image": images})
        pairs = zip(probability.reshape(-1).tolist(), ct_logit.reshape(-1).tolist(), strict=True)
        return list(pairs)

    def unbatch(self, output: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return output

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        probability, ct_logit = output
        inside = ct_logit >= self.gate_threshold
        if not inside:
            result = "Not a CT slice"
        elif probability >= self.threshold:
            result = "Potentially Fracture"
        else:
            result = "Normal"
        return {"result": result, "prediction": probability, "in_distribution": inside}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--model", default="ml_model/models/default")
    args = parser.parse_args()
    api = FractureAPI(args.model, max_batch_size=16, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()

"""A seed-style server, as the public seed projects wrote it: Flask, one image per
request, PIL preprocessing, and ``model.predict`` on every request.

Started by the serving benchmark as the baseline; not part of the product.
    python -m bench.seed_server --port 8100 --model ml_model/models/default
"""

from __future__ import annotations

import argparse
import io

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

# The bundle's model crops around the spine in its own graph: its layer must be registered.
import ml_model.architectures.spine_crop  # noqa: F401


def create_app(model_dir: str) -> Flask:
    model = keras.models.load_model(f"{model_dir}/model.keras", compile=False)
    size = int(model.input_shape[1])
    app = Flask(__name__)

    @app.get("/ready")
    def ready() -> object:
        return jsonify(status="ready")

    @app.post("/predict")
    def predict() -> object:
        image = Image.open(io.BytesIO(request.files["file"].read())).convert("RGB")
        array = np.asarray(image.resize((size, size)), dtype=np.float32)[np.newaxis]
        probability = float(model.predict(array, verbose=0)[0][0])
        result = "Potentially Fracture" if probability >= 0.5 else "Normal"
        return jsonify(result=result, prediction=probability)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", default="ml_model/models/default")
    args = parser.parse_args()
    create_app(args.model).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()

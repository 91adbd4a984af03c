"""The committed SavedModel has the signature TF Serving's REST `predict` needs, as
`saved_model_cli` (the tool shipped with TensorFlow) reports it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.helpers import MODEL_BUNDLE

SAVED_MODEL = MODEL_BUNDLE / "saved_model"


def _saved_model_cli() -> list[str]:
    script = Path(sys.executable).parent / "saved_model_cli"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def parse_signature(text: str) -> dict[str, Any]:
    """`saved_model_cli show --signature_def` output -> inputs/outputs/method."""
    tensors: dict[str, dict[str, dict[str, Any]]] = {"inputs": {}, "outputs": {}}
    pattern = re.compile(
        r"(inputs|outputs)\['([^']+)'\] tensor_info:\s*"
        r"dtype: (\w+)\s*shape: (\(.*?\)|unknown_rank)\s*name: (\S+)"
    )
    for kind, key, dtype, shape, name in pattern.findall(text):
        dims = (
            None
            if shape == "unknown_rank"
            else tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        )
        tensors[kind][key] = {"dtype": dtype, "shape": dims, "name": name}
    method = re.search(r"Method name is: (\S+)", text)
    return {**tensors, "method": method.group(1) if method else None}


@pytest.fixture(scope="module")
def signature() -> dict[str, Any]:
    assert (SAVED_MODEL / "saved_model.pb").is_file(), f"no SavedModel at {SAVED_MODEL}"
    result = subprocess.run(
        [
            *_saved_model_cli(),
            "show",
            "--dir",
            str(SAVED_MODEL),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return parse_signature(result.stdout)


@pytest.mark.slow
def test_serving_default_signature_matches_tf_serving_rest_predict(signature):
    size = json.loads((MODEL_BUNDLE / "model_card.json").read_text())["input"]["size"]
    assert signature["method"] == "tensorflow/serving/predict"
    inputs, outputs = signature["inputs"], signature["outputs"]
    assert set(inputs) == {"image"}, "REST `instances`/`inputs` are keyed by this name"
    assert inputs["image"]["dtype"] == "DT_UINT8"
    assert inputs["image"]["shape"] == (-1, size, size, 3)
    # P(fracture) and the CT gate's logit: TF Serving mode needs no local model for either.
    assert set(outputs) == {"probability", "ct_logit"}
    for name in ("probability", "ct_logit"):
        assert outputs[name]["dtype"] == "DT_FLOAT"
        assert outputs[name]["shape"] == (-1, 1)


def test_parse_signature_reads_saved_model_cli_output():
    text = """The given SavedModel SignatureDef contains the following input(s):
  inputs['image'] tensor_info:
      dtype: DT_UINT8
      shape: (-1, 224, 224, 3)
      name: serving_default_image:0
The given SavedModel SignatureDef contains the following output(s):
  outputs['probability'] tensor_info:
      dtype: DT_FLOAT
      shape: (-1, 1)
      name: StatefulPartitionedCall:0
Method name is: tensorflow/serving/predict
"""
    parsed = parse_signature(text)
    assert parsed["inputs"]["image"] == {
        "dtype": "DT_UINT8",
        "shape": (-1, 224, 224, 3),
        "name": "serving_default_image:0",
    }
    assert parsed["outputs"]["probability"]["shape"] == (-1, 1)
    assert parsed["method"] == "tensorflow/serving/predict"

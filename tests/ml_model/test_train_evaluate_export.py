"""End to end on a tiny sample: train one epoch, export, reload three ways, evaluate, predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ml_model import predict
from ml_model.bundle import (
    CARD_FILE,
    GRADCAM_ONNX_FILE,
    KERAS_FILE,
    ONNX_FILE,
    SAVED_MODEL_DIR,
    SERVING_GATE_OUTPUT,
    TFLITE_FILE,
)
from ml_model.config import DEFAULT_MODEL_DIR, EXPORT_WINDOW
from ml_model.data.dataset import find_images, load_arrays
from ml_model.evaluation import evaluate
from ml_model.inference.core import InferenceCore
from ml_model.training.export import saved_model_outputs, saved_model_predict, tflite_predict
from ml_model.training.train import TrainConfig, parse_args, train
from tests.conftest import WriteDataset

IMG_SIZE = 64
INPUT_SIZE = 96


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One epoch of the custom CNN on synthetic slices; returns (data, bundle) folders."""
    from tests.conftest import synthetic_slice

    root = tmp_path_factory.mktemp("data")
    from PIL import Image

    # Two "series", both labels in each, so leave-one-series-out has a fold per series.
    for label, name in enumerate(("normal", "fracture")):
        (root / name).mkdir()
        for s in range(6):
            for c in range(3):
                pixels = synthetic_slice(label, seed=label * 100 + s * 10 + c)
                Image.fromarray(pixels).save(root / name / f"SER{s % 2} ({label}{s})-copy{c}.png")
    out = tmp_path_factory.mktemp("bundle")
    config = TrainConfig(
        data=str(root),
        out=str(out),
        epochs=1,
        batch_size=8,
        img_size=IMG_SIZE,
        input_size=INPUT_SIZE,
        gate_negatives=4,
        seed=1,
    )
    train(config, ["--data", str(root), "--epochs", "1"])
    return root, out


def test_training_writes_bundle_and_reports(trained_bundle: tuple[Path, Path]) -> None:
    _, out = trained_bundle
    for name in (KERAS_FILE, SAVED_MODEL_DIR, TFLITE_FILE, ONNX_FILE, GRADCAM_ONNX_FILE, CARD_FILE):
        assert (out / name).exists(), name
    for name in (
        "history_train.csv",
        "training_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
    ):
        assert (out / "report" / name).is_file(), name
    card = json.loads((out / CARD_FILE).read_text())
    assert card["architecture"] == "custom" and card["input"]["size"] == INPUT_SIZE
    assert card["input"]["crop"]["output_size"] == IMG_SIZE
    assert set(card["operating_points"]) == {"sensitive", "specific"}
    assert card["training"]["argv"] == ["--data", str(_), "--epochs", "1"]
    assert len(card["data"]["sha256"]) == 64
    # Calibrated on out-of-fold scores; a report per held-out series, with intervals.
    assert card["calibration"]["source"].startswith("leave-one-series-out")
    assert set(card["leave_one_series_out"]) == {"SER0", "SER1"}
    # Drift monitoring's reference: the synthetic studies of out-of-fold slice scores.
    histogram = card["study"]["score_histogram"]
    assert histogram["n"] == 400 and sum(histogram["fractions"]) == pytest.approx(1.0)
    assert histogram["edges"][0] == 0.0 and histogram["edges"][-1] == 1.0
    for row in card["leave_one_series_out"].values():
        assert set(row["intervals_95"]) == {"auc", "recall", "specificity"}
        assert {"recall", "specificity", "accuracy"} <= set(row["product"])
    assert card["gate"]["threshold_rule"]
    assert (out / "gate.npz").is_file()
    assert "not a diagnostic device" in card["intended_use"].lower()
    assert any("Level shortcut" in caveat for caveat in card["caveats"])


def test_export_round_trip_agrees(trained_bundle: tuple[Path, Path]) -> None:
    data, out = trained_bundle
    predictor = InferenceCore(out)
    images, _ = load_arrays(
        find_images(data), predictor.bundle.img_size, predictor.bundle.window, progress=False
    )
    keras_probs = predictor.scores(images).probability
    saved_probs = saved_model_predict(out / SAVED_MODEL_DIR, images)
    tflite_probs = tflite_predict(out / TFLITE_FILE, images)
    np.testing.assert_allclose(saved_probs, keras_probs, atol=1e-4)
    np.testing.assert_allclose(tflite_probs, keras_probs, atol=1e-4)
    # The exported graph carries the CT gate too (TF Serving mode needs no local model).
    logits = saved_model_outputs(out / SAVED_MODEL_DIR, images)[SERVING_GATE_OUTPUT].reshape(-1)
    # ... and equals the gate's own float64 numpy logit of the same features (the gate's
    # backbone and image statistics: nothing of the fracture network).
    gate = predictor.bundle.gate
    np.testing.assert_allclose(logits, gate.logits(gate.features(images)), atol=1e-3)
    np.testing.assert_allclose(predictor.scores(images).ct_logit, logits, atol=1e-4)
    # ONNX Runtime runs the same graph; the card records its parity on the training slices.
    from ml_model.inference.forward_onnx import OnnxForward

    onnx = OnnxForward.from_bundle(out)(images)
    np.testing.assert_allclose(onnx.probability, keras_probs, atol=1e-3)
    np.testing.assert_allclose(onnx.ct_logit, logits, atol=1e-3)
    parity = json.loads((out / CARD_FILE).read_text())["runtimes"]["onnx"]["parity"]
    assert parity["verdicts_identical"]
    assert {"train (the out-of-fold slices)", "non-CT (gate negatives)", "synthetic"} <= set(
        parity["slices"]
    )
    assert parity["slices"]["train (the out-of-fold slices)"]["n"] == len(images)


def test_export_all_rewrites_every_runtime_file(
    trained_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    """`python -m ml_model.training.export --bundle DIR --all` (after a change to in-graph
    code) writes the SavedModel, TFLite and ONNX files again, and they agree with Keras."""
    import shutil

    from ml_model.training import export

    data, out = trained_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(out, bundle)
    for path in (bundle / SAVED_MODEL_DIR, bundle / TFLITE_FILE, bundle / "model.onnx"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    export.main(["--bundle", str(bundle), "--all"])
    core = InferenceCore(bundle)
    images, _ = load_arrays(
        find_images(data), core.bundle.img_size, core.bundle.window, progress=False
    )
    expected = core.scores(images).probability
    np.testing.assert_allclose(
        saved_model_predict(bundle / SAVED_MODEL_DIR, images), expected, atol=1e-4
    )
    np.testing.assert_allclose(tflite_predict(bundle / TFLITE_FILE, images), expected, atol=1e-4)
    assert not list(bundle.glob(".saved_model-*")), "the scratch folder is removed"


def test_evaluate_metrics_match_hand_count(
    trained_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained_bundle
    metrics = evaluate.evaluate(bundle, data, tmp_path)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["confusion_matrix"] == metrics["confusion_matrix"]
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    threshold = written["threshold"]
    tp = sum(1 for r in rows if r["label"] == "1" and float(r["probability"]) >= threshold)
    fn = sum(1 for r in rows if r["label"] == "1" and float(r["probability"]) < threshold)
    fp = sum(1 for r in rows if r["label"] == "0" and float(r["probability"]) >= threshold)
    tn = sum(1 for r in rows if r["label"] == "0" and float(r["probability"]) < threshold)
    assert written["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert written["n"] == len(rows) == 36
    assert {"refused", "product", "per_series", "intervals_95"} <= set(written)
    refused = sum(1 for r in rows if r["result"] == "Not a CT slice")
    assert written["refused"] == refused
    shortcut = json.loads((tmp_path / "shortcut.json").read_text())
    assert set(shortcut["counterfactuals"]) == {
        "uniform_bright_ellipse",
        "fracture_bone_to_soft_tissue",
        "normal_upper_half_blanked",
    }
    assert (tmp_path / "shortcut.png").is_file()
    assert written["accuracy"] == pytest.approx((tp + tn) / len(rows))
    assert written["recall"] == pytest.approx(tp / (tp + fn))
    for key in ("precision", "f1", "auc", "loss"):
        assert key in written
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "roc_curve.png").is_file()


def test_predict_cli_reports_and_skips_bad_files(
    trained_bundle: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, bundle = trained_bundle
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    out_csv = tmp_path / "rows.csv"
    code = predict.main([str(data), str(bad), "--model", str(bundle), "--csv", str(out_csv)])
    assert code == 0
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 36
    assert {r["result"] for r in rows} <= {"Potentially Fracture", "Normal", "Not a CT slice"}
    assert "skipped" in capsys.readouterr().err


def test_parse_args_defaults_are_the_seed() -> None:
    config = parse_args(["--data", "x"])
    assert (config.arch, config.optimizer, config.batch_size, config.epochs) == (
        "custom",
        "sgd",
        16,
        20,
    )
    assert config.out == "runs/custom"


def test_parse_args_defaults_are_train_config() -> None:
    """The flags are built from TrainConfig's fields: no default written twice."""
    assert parse_args([]) == TrainConfig()
    assert parse_args(["--arch", "efficientnet_lite0"]).out == "runs/efficientnet_lite0"
    flags = ["--report-dir", "r", "--img-size", "224", "--lr", "0.5", "--cv", "none"]
    switches = ["--cache-features", "--mixed-precision", "--tflite-float16"]
    every_flag = parse_args([*flags, *switches, "--test-data", "t"])
    assert (every_flag.report_dir, every_flag.img_size, every_flag.lr, every_flag.cv) == (
        "r",
        224,
        0.5,
        "none",
    )
    assert every_flag.cache_features and every_flag.mixed_precision and every_flag.tflite_float16
    assert every_flag.test_data == "t"
    with pytest.raises(SystemExit):
        parse_args(["--optimizer", "lbfgs"])


def test_write_dataset_fixture_layouts(write_dataset: WriteDataset) -> None:
    assert find_images(write_dataset("kaggle"), splits=["train"])


def test_committed_default_bundle_formats_agree(shared_data: Path) -> None:
    """The committed model gives the same probabilities through .keras, SavedModel and TFLite."""
    files = (
        sorted((shared_data / "train" / "fracture").glob("*.png"))[:4]
        + sorted((shared_data / "train" / "normal").glob("*.png"))[:4]
    )
    predictor = InferenceCore(DEFAULT_MODEL_DIR)
    from ml_model.imaging.transforms import load_image

    images = np.stack([load_image(f, predictor.bundle.img_size, *EXPORT_WINDOW) for f in files])
    probs = predictor.scores(images).probability
    np.testing.assert_allclose(
        saved_model_predict(DEFAULT_MODEL_DIR / SAVED_MODEL_DIR, images), probs, atol=1e-4
    )
    # A float16 TFLite (kept small for the repository) rounds its weights to ~3 significant
    # digits: a looser bound on the probability, and the same side of the threshold.
    tolerance = 5e-3 if (predictor.bundle.card.training or {}).get("tflite_float16") else 1e-4
    lite = tflite_predict(DEFAULT_MODEL_DIR / TFLITE_FILE, images)
    np.testing.assert_allclose(lite, probs, atol=tolerance)
    threshold = predictor.threshold()
    assert np.array_equal(lite >= threshold, probs >= threshold)


def test_mirrored_strategy_trains_on_cpu_with_one_replica(tmp_path: Path) -> None:
    import tensorflow as tf

    from ml_model.training.train import make_strategy

    strategy = make_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1
    root = tmp_path / "data"
    from PIL import Image

    from tests.conftest import synthetic_slice

    for label, name in enumerate(("normal", "fracture")):
        (root / name).mkdir(parents=True)
        for s in range(5):
            Image.fromarray(synthetic_slice(label, s)).save(root / name / f"M{label} ({s}).png")
    card = train(
        TrainConfig(
            data=str(root),
            out=str(tmp_path / "out"),
            epochs=1,
            batch_size=4,
            img_size=IMG_SIZE,
            input_size=0,
            cv="none",
            gate_negatives=3,
            strategy="mirrored",
        )
    )
    assert card["training"]["strategy"] == "mirrored"


def test_missing_data_folder_is_one_clear_error(tmp_path: Path) -> None:
    from ml_model.training.train import main

    with pytest.raises(SystemExit, match="does not exist"):
        main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])


def test_compare_series_writes_per_series_intervals(
    trained_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    """`compare --split series`: a row per held-out series, intervals, table and plot."""
    from ml_model.training import compare

    data, _ = trained_bundle
    compare.RECIPES["custom"] = {
        "input_size": INPUT_SIZE,
        "img_size": IMG_SIZE,
        "gate_negatives": 4,
    }
    try:
        compare.main(["--data", str(data), "--split", "series", "--archs", "custom",
                      "--epochs", "1", "--out", str(tmp_path)])  # fmt: skip
    finally:
        compare.RECIPES["custom"] = {}
    results = json.loads((tmp_path / "comparison_series.json").read_text())
    rows = results["archs"]["custom"]["series"]
    assert set(rows) == {"SER0", "SER1"}
    for row in rows.values():
        assert set(row["intervals_95"]) == {"auc", "recall", "specificity"}
        assert "product" in row and "refused" in row
    assert "SER0" in (tmp_path / "comparison_series.md").read_text()
    assert (tmp_path / "comparison_series.png").is_file()

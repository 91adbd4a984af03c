"""The RSNA training pipeline end to end on CPU: synthetic competition-layout studies (the
generator in ``testing.rsna_synth``) -> cache -> folds -> stage 1 and 2 -> bundle; the real
5-study sample (every patient positive, every slice labelled 0) without a crash; resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from ml_model.card import STUDY_OUTPUTS, VERTEBRAE, load_card, score_histogram
from ml_model.inference.study_head import StudyHead
from tests.ml_model.test_rsna_distributed import tiny_studies

RSNA_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "rsna-cspine-sample"


def tiny_config(rsna: Path, out: Path, **overrides: object):
    from ml_model.training.train_rsna import RsnaConfig

    values: dict[str, object] = dict(
        rsna=str(rsna), out=str(out), arch="custom", size=64, epochs=1, batch_size=16,
        folds=2, holdout=0.25, sequence_length=8, head_epochs=3, gate_negatives=4,
        gate_slices=40, bootstrap_rounds=20, progress=False,
    )  # fmt: skip
    values.update(overrides)
    return RsnaConfig(**values)  # type: ignore[arg-type]


def test_train_rsna_on_synthetic_studies_writes_a_study_bundle(tmp_path):
    from ml_model.training.train_rsna import AGGREGATIONS, CacheSource, score_studies, study_outputs
    from testing.rsna_synth import generate

    data = generate(tmp_path / "data", studies=10, seed=3, size=64, slices=16, segmentations=0.5)
    assert len(data.studies) == 10
    out = tmp_path / "bundle"
    config = tiny_config(tmp_path / "data", out)
    written = train_rsna_quietly(config)

    card = load_card(out)
    assert card.input.context is not None and card.input.context.spacing_mm == 2.0
    assert card.study.head is not None
    assert card.study.head.outputs == list(STUDY_OUTPUTS)
    head = StudyHead.load(out)
    assert head.sequence_length == 8 and head.feature_dim == card.study.head.feature_dim == 24
    metrics = written["metrics"]
    assert set(metrics) >= {"held_out", "out_of_fold", "competition_log_loss"}
    assert np.isfinite(metrics["competition_log_loss"]["held_out"]["value"])
    outputs = metrics["held_out"]["sensitive"]["study"]["outputs"]
    assert list(outputs) == list(STUDY_OUTPUTS)
    for name in VERTEBRAE:
        assert {"auc", "sensitivity", "specificity", "ci_95"} <= set(outputs[name])
    assert "level_matched" in metrics["out_of_fold"]["sensitive"]
    # Drift monitoring's reference: the out-of-fold studies' patient_overall scores.
    histogram = card.study.score_histogram
    oof = np.load(out / "report" / "out_of_fold.npz")["study_probability"][:, 0]
    assert histogram is not None and histogram == score_histogram(oof, histogram.source)
    assert written["data"]["cache"]["read_errors"] == 0
    assert "3rd place" in written["rsna"]["approach"]["follows"]
    assert written["training"]["stage1_slices_per_second"] > 0
    # The held-out figures came from the numpy head on the training graph's features; the
    # exported model.keras must give the same study probabilities.
    held = np.load(out / "report" / "held_out.npz")
    from ml_model.architectures.layers import load_model

    model = load_model(out / "model.keras")
    uid = str(held["uid"][0])
    scores, _ = score_studies(model, CacheSource(config.cache_dir()), [uid], config)
    served = study_outputs(
        card.study.aggregation, card.study.top_k, head(scores[uid].features), scores[uid].fracture
    )
    np.testing.assert_allclose(served, held["study_probability"][0], atol=1e-5)
    candidates = card.study.model_dump()["calibration"]["aggregation_candidates"]["auc"]
    assert set(candidates) == {name for name, _ in AGGREGATIONS}
    assert card.study.aggregation in candidates
    assert json.loads((out / "report" / "run.json").read_text())["arch"] == "custom"


def train_rsna_quietly(config):
    from ml_model.training.train_rsna import train_rsna

    return train_rsna(config, argv=["--test"])


@pytest.fixture(scope="module")
def real_sample_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The real 5-study sample trained once (as `make train-rsna` does with its default
    RSNA folder): the bundle folder and the card written."""
    if not RSNA_SAMPLE.is_dir():
        pytest.skip(f"real RSNA sample not at {RSNA_SAMPLE} (see its README)")
    out = tmp_path_factory.mktemp("real-sample") / "bundle"
    card = train_rsna_quietly(tiny_config(RSNA_SAMPLE, out, folds=5, holdout=0.2))
    return out, card


def test_train_rsna_on_the_real_sample_records_what_cannot_be_computed(real_sample_bundle):
    """5 studies, all patients positive, all 34 slices labelled 0, no segmentation."""
    out, card = real_sample_bundle
    assert card["data"]["cache"]["read_errors"] == 0
    assert card["data"]["studies"] == 5 and card["data"]["slices"] == 34
    assert card["data"]["slices_fracture"] == 0
    held = card["metrics"]["held_out"]["sensitive"]
    overall = held["study"]["outputs"]["patient_overall"]
    assert overall["auc"] is None and overall["undefined"]["auc"].startswith("one class only")
    assert held["slices"]["specificity"] is not None  # the skull-base slices: all normal
    assert held["level_matched"]["level_matched_specificity"] is None
    assert np.isfinite(card["metrics"]["competition_log_loss"]["held_out"]["value"])
    reason = card["study"]["calibration"]["details"]["patient_overall"]["reason"]
    assert reason.startswith("one class only (4 positive, 0 negative)")
    assert load_card(out).study.head is not None


def test_the_real_sample_bundle_serves_c1_to_c7_in_the_answer_the_pdf_and_the_sr(
    real_sample_bundle, tmp_path
):
    """The bundle trained on real DICOM, served by the production app unchanged (ONNX
    Runtime): /predict/study answers with C1-C7 for a real series, /report prints them, and
    the PACS worker's SR codes a finding site for each."""
    from fastapi.testclient import TestClient
    from pydicom import dcmread
    from pypdf import PdfReader

    from backend.app.core.config import Settings
    from backend.app.main import create_app
    from pacs.clients import dataset_bytes
    from pacs.dicom_out import build_sr, output_uids, sr_text_values

    out, _ = real_sample_bundle
    series = sorted(p for p in (RSNA_SAMPLE / "train_images").iterdir() if p.is_dir())[0]
    files = [("files", (f.name, f.read_bytes())) for f in sorted(series.glob("*.dcm"))]
    settings = Settings(model_dir=out, frontend_dist=tmp_path / "no-dist")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/predict/study", files=files)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert list(body["vertebrae"]) == list(VERTEBRAE)
        assert body["aggregation"] == "study_head" and body["errors"] == []
        report = client.post("/report", files=files)
        assert report.status_code == 200, report.text
    words = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(report.content)).pages)
    assert "Vertebrae (C1-C7)" in words and all(name in words for name in VERTEBRAE)
    sources = [dcmread(series / name) for _, (name, _) in files]
    sr = build_sr(body, sources, output_uids(str(sources[0].SeriesInstanceUID), 1), None)
    values = sr_text_values(dcmread(io.BytesIO(dataset_bytes(sr))))
    assert values["Finding Site"] == [f"{name} vertebra" for name in VERTEBRAE]
    assert len(values["Vertebra fracture score"]) == len(VERTEBRAE)


def test_stage_one_resumes_after_the_last_finished_epoch(tmp_path, monkeypatch):
    from ml_model.training import train_rsna as module
    from ml_model.training.distribute import make_strategy

    studies = tiny_studies(size=32)
    source = module.MemorySource(studies)
    config = tiny_config(tmp_path, tmp_path, size=32, epochs=1, embedding=4, context_mm=1.0)
    strategy = make_strategy("auto")
    # A first fit whose backup survives (as if killed after epoch 1's checkpoint).
    monkeypatch.setattr(module.EpochBackup, "clear", lambda self: None)
    module.fit_slice_stage(config, source, sorted(studies), strategy, tmp_path, "p")
    monkeypatch.undo()
    (tmp_path / "p.weights.h5").unlink()
    config.epochs, config.resume = 2, True
    resumed = module.fit_slice_stage(config, source, sorted(studies), strategy, tmp_path, "p")
    assert len(resumed.history["loss"]) == 1  # only epoch 2 ran
    rows = (tmp_path / "history_p.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    assert not (tmp_path / "backup").exists()
    # A finished phase is loaded, not refitted.
    again = module.fit_slice_stage(config, source, sorted(studies), strategy, tmp_path, "p")
    assert again.resumed and not again.history
    for a, b in zip(again.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path):
    from ml_model.training.train_rsna import check_resume

    config = tiny_config(tmp_path, tmp_path)
    check_resume(tmp_path, config)
    config.resume, config.epochs = True, 3
    with pytest.raises(SystemExit, match="epochs"):
        check_resume(tmp_path, config)


@pytest.mark.parametrize(
    ("labels", "levels_known", "expected"),
    [
        # 2 fracture slices -> 2 of the 6 normals; unknown slices with levels: up to 2 more.
        ([1, 1, 0, 0, 0, 0, 0, 0, -1, -1, -1], True, {1: 2, 0: 2, -1: 2}),
        # No level known: the unknown slices teach nothing and are never drawn.
        ([1, 1, 0, 0, 0, 0, 0, 0, -1, -1, -1], False, {1: 2, 0: 2}),
        # No fracture slice (the real sample): every normal slice.
        ([0, 0, 0, 0], False, {0: 4}),
    ],
)
def test_epoch_sample_is_class_balanced(labels, levels_known, expected):
    from ml_model.training.train_rsna import StudyIndex, epoch_sample

    label = np.array(labels, np.int8)
    index = StudyIndex("s", label, np.zeros((len(label), 7), np.uint8), levels_known, 1.0,
                       np.zeros(8, np.float32))  # fmt: skip
    sample = epoch_sample([index], 1.0, None, np.random.default_rng(0))
    picked = label[sample[0]]
    assert {int(v): int((picked == v).sum()) for v in np.unique(picked)} == expected


def test_the_command_line_is_the_config() -> None:
    """Flags come from RsnaConfig's fields: the defaults are the dataclass's, --rsna is
    required, switches set booleans."""
    from ml_model.training.train_rsna import RsnaConfig, parse_args

    assert parse_args(["--rsna", "x"]) == RsnaConfig(rsna="x")
    flagged = parse_args(["--rsna", "x", "--no-progress", "--mixed-precision", "--studies", "3"])
    assert (flagged.progress, flagged.mixed_precision, flagged.studies) == (False, True, 3)
    with pytest.raises(SystemExit):
        parse_args([])


LABELS = np.array([0, 0, 1, 1])
HEAD_RANKS = [0.1, 0.2, 0.8, 0.9]  # patient_overall that ranks the patients perfectly
HEAD_WRONG = [0.9, 0.8, 0.2, 0.1]
SLICES_RANK = [[0.1, 0.2], [0.3, 0.1], [0.9, 0.1], [0.8, 0.7]]  # top-1 ranks them perfectly
SLICES_WRONG = [[0.9, 0.9], [0.8, 0.8], [0.1, 0.1], [0.2, 0.2]]


@pytest.mark.parametrize(
    ("labels", "head", "slices", "chosen"),
    [
        (LABELS, HEAD_RANKS, SLICES_WRONG, "study_head"),
        (LABELS, HEAD_WRONG, SLICES_RANK, "top1_mean"),
        (LABELS, HEAD_RANKS, SLICES_RANK, "study_head"),  # a tie keeps the head
        (np.array([1, 1, 1, 1]), HEAD_WRONG, SLICES_RANK, "study_head"),  # no AUC: the head
    ],
)
def test_the_study_score_is_the_candidate_with_the_best_out_of_fold_auc(
    labels, head, slices, chosen
) -> None:
    from ml_model.training.train_rsna import choose_aggregation, study_outputs

    heads = [np.array([p, *([0.5] * 7)]) for p in head]
    probs = [np.array(s) for s in slices]
    aggregation, top_k, aucs = choose_aggregation(labels, heads, probs)
    assert aggregation == chosen and set(aucs) >= {"study_head", "top1_mean", "top2_mean"}
    outputs = study_outputs(aggregation, top_k, heads[2], probs[2])
    np.testing.assert_array_equal(outputs[1:], heads[2][1:])  # C1..C7: the head's
    expected = head[2] if chosen == "study_head" else max(slices[2])
    assert outputs[0] == pytest.approx(expected)

"""The study head in numpy (no TensorFlow: the server never imports it): a study's slice
features -> P(patient_overall), P(C1) .. P(C7).

The computation is the Keras head of ``ml_model.architectures.study_head`` (which trains it),
run on the weights in the bundle's ``study_head.npz``:

    features (Z, F), the slices in head->foot order
      -> :func:`resample_sequence` to T slices (linear along the slice axis)
      -> (x - mean) / scale
      -> a bidirectional GRU (Keras' GRU: gates z, r, h; reset_after; tanh / sigmoid),
         forward and backward states concatenated per slice -> (T, 2U)
      -> attention: a = softmax_t(tanh(h W1 + b1) w2 + b2); pooled = sum_t a_t h_t
      -> [pooled, max_t of the standardised features] (2U + F)
      -> logits = that Wo + bo -> sigmoid -> (8,) in ``STUDY_OUTPUTS`` order

``study_head.npz`` keys (float32 unless said):

===============================  =========  ==============================================
key                              shape      meaning
===============================  =========  ==============================================
mean, scale                      (F,)       feature standardisation
gru_forward_kernel               (F, 3U)    input weights, gate order z | r | h
gru_forward_recurrent_kernel     (U, 3U)    recurrent weights, same order
gru_forward_bias                 (2, 3U)    row 0: input bias, row 1: recurrent bias
gru_backward_*                              the same for the backward direction
attention_hidden_kernel, _bias   (2U, A)    W1, b1
attention_score_kernel, _bias    (A, 1)     w2, b2
output_kernel, output_bias       (2U+F, 8)  Wo, bo
sequence_length                  ()         T, int32
outputs                          (8,)       output names (unicode): STUDY_OUTPUTS
===============================  =========  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_model.bundle import STUDY_HEAD_FILE
from ml_model.card import STUDY_OUTPUTS, StudyHeadSpec

ARRAY_KEYS = (
    "mean",
    "scale",
    "gru_forward_kernel",
    "gru_forward_recurrent_kernel",
    "gru_forward_bias",
    "gru_backward_kernel",
    "gru_backward_recurrent_kernel",
    "gru_backward_bias",
    "attention_hidden_kernel",
    "attention_hidden_bias",
    "attention_score_kernel",
    "attention_score_bias",
    "output_kernel",
    "output_bias",
    "sequence_length",
    "outputs",
)


class StudyHeadError(ValueError):
    """A ``study_head.npz`` that is missing, unreadable or inconsistent (names the file)."""


def resample_sequence(features: np.ndarray, length: int) -> np.ndarray:
    """(Z, F) slice features -> (length, F): linear interpolation along the slice axis, the
    first and last slices kept (a single slice is repeated). float32."""
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected (Z, F) features with Z >= 1, got shape {x.shape}")
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    if x.shape[0] == 1:
        return np.repeat(x, length, axis=0)
    position = np.linspace(0.0, x.shape[0] - 1, length)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, x.shape[0] - 1)
    weight = (position - lower).astype(np.float32)[:, None]
    return ((1.0 - weight) * x[lower] + weight * x[upper]).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gru(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras' GRU (reset_after=True) over x (T, F) -> every state (T, U)."""
    units = recurrent.shape[0]
    projected = x @ kernel + bias[0]  # (T, 3U): every input term at once
    h = np.zeros(units, np.float64)
    states = np.empty((x.shape[0], units), np.float64)
    for t in range(x.shape[0]):
        inner = h @ recurrent + bias[1]
        z = _sigmoid(projected[t, :units] + inner[:units])
        r = _sigmoid(projected[t, units : 2 * units] + inner[units : 2 * units])
        candidate = np.tanh(projected[t, 2 * units :] + r * inner[2 * units :])
        h = z * h + (1.0 - z) * candidate
        states[t] = h
    return states


@dataclass(frozen=True)
class StudyHead:
    """The weights of one trained head (``study_head.npz``) and its numpy forward."""

    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, bundle_dir: str | Path) -> StudyHead:
        """Read ``<bundle_dir>/study_head.npz``; :class:`StudyHeadError` names what is wrong."""
        path = Path(bundle_dir) / STUDY_HEAD_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except FileNotFoundError as exc:
            raise StudyHeadError(f"{path}: the bundle has no study head") from exc
        except (OSError, ValueError) as exc:
            raise StudyHeadError(f"{path}: unreadable study head ({exc})") from exc
        try:
            return cls.from_arrays(arrays)
        except StudyHeadError as exc:
            raise StudyHeadError(f"{path}: {exc}") from exc

    @classmethod
    def for_card(cls, bundle_dir: str | Path, spec: StudyHeadSpec) -> StudyHead:
        """:meth:`load`, checked against the card's ``study.head`` (feature dimension and
        sequence length): what ``Bundle.load`` reads a study bundle's head with."""
        head = cls.load(bundle_dir)
        stored = {"feature_dim": head.feature_dim, "sequence_length": head.sequence_length}
        for name, value in stored.items():
            if getattr(spec, name) != value:
                raise StudyHeadError(
                    f"{bundle_dir}: field `study.head.{name}` of the model card "
                    f"({getattr(spec, name)}) differs from {spec.file} ({value})"
                )
        return head

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> StudyHead:
        """Check the keys and shapes against each other; float64 copies for the forward."""
        missing = [k for k in ARRAY_KEYS if k not in arrays]
        if missing:
            raise StudyHeadError(f"study head lacks {', '.join(missing)}")
        outputs = tuple(str(name) for name in np.asarray(arrays["outputs"]).reshape(-1))
        if outputs != STUDY_OUTPUTS:
            raise StudyHeadError(f"study head outputs {outputs}, expected {STUDY_OUTPUTS}")
        held = {k: np.asarray(v, np.float64) for k, v in arrays.items() if k not in ("outputs",)}
        features = held["mean"].shape[0]
        units = held["gru_forward_recurrent_kernel"].shape[0]
        expected = {
            "scale": (features,),
            "gru_forward_kernel": (features, 3 * units),
            "gru_backward_kernel": (features, 3 * units),
            "gru_backward_recurrent_kernel": (units, 3 * units),
            "gru_forward_bias": (2, 3 * units),
            "gru_backward_bias": (2, 3 * units),
            "output_kernel": (2 * units + features, len(STUDY_OUTPUTS)),
        }
        for key, shape in expected.items():
            if held[key].shape != shape:
                raise StudyHeadError(f"study head {key} has shape {held[key].shape}, not {shape}")
        return cls({**held, "outputs": np.array(outputs)})

    @property
    def sequence_length(self) -> int:
        return int(self.arrays["sequence_length"])

    @property
    def feature_dim(self) -> int:
        return int(self.arrays["mean"].shape[0])

    def logits_and_attention(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(8,) logits and the (T,) attention weights for one study's (Z, F) features."""
        a = self.arrays
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"expected (Z, {self.feature_dim}) features, got shape {x.shape}")
        x = resample_sequence(x, self.sequence_length).astype(np.float64)
        x = (x - a["mean"]) / a["scale"]
        forward = _gru(
            x, a["gru_forward_kernel"], a["gru_forward_recurrent_kernel"], a["gru_forward_bias"]
        )
        backward = _gru(
            x[::-1],
            a["gru_backward_kernel"],
            a["gru_backward_recurrent_kernel"],
            a["gru_backward_bias"],
        )[::-1]
        h = np.concatenate([forward, backward], axis=1)
        hidden = np.tanh(h @ a["attention_hidden_kernel"] + a["attention_hidden_bias"])
        score = (hidden @ a["attention_score_kernel"] + a["attention_score_bias"])[:, 0]
        weights = np.exp(score - score.max())
        weights /= weights.sum()
        pooled = np.concatenate([weights @ h, x.max(axis=0)])
        return pooled @ a["output_kernel"] + a["output_bias"], weights

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(8,) logits in ``STUDY_OUTPUTS`` order."""
        return self.logits_and_attention(features)[0]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(Z, F) slice features of one study -> (8,) probabilities, ``STUDY_OUTPUTS`` order."""
        return _sigmoid(self.logits(features))

    def named(self, features: np.ndarray) -> dict[str, float]:
        """The probabilities keyed by output name."""
        return {name: float(p) for name, p in zip(STUDY_OUTPUTS, self(features), strict=True)}

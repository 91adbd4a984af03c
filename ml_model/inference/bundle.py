"""A model bundle, loaded: the one reader of its card, CT gate and study head.

``Bundle.load(dir)`` reads ``model_card.json`` (validated: ``ml_model.card.ModelCard``),
``gate.npz`` and, for a study bundle, ``study_head.npz`` once, and every per-model fact the
product uses comes from it: input size, DICOM window, crop, context, temperature, operating
points, the CT gate's threshold, study settings (aggregation, top-k, head) and the outputs the
bundle has. The inference core, the runtimes (``inference/runtimes.py``), the server,
``predict``, ``evaluate``, the export parity checks and the benchmarks all take a ``Bundle``;
nothing else opens those files to serve. The file names are ``ml_model.bundle``'s.

The server's ``THRESHOLD`` and ``WINDOW_LEVEL`` / ``WINDOW_WIDTH`` settings are applied in one
place, :meth:`Bundle.with_overrides`; the card itself (``GET /model``) stays as written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ml_model.card import (
    DEFAULT_OPERATING_POINT,
    STUDY_HEAD_AGGREGATION,
    STUDY_OUTPUTS,
    CardError,
    Context,
    ModelCard,
    load_card,
)
from ml_model.inference.gate import CTGate

if TYPE_CHECKING:
    from ml_model.inference.study_head import StudyHead

# The outputs of a slice bundle: the slice's P(fracture) (a study bundle adds C1..C7).
SLICE_OUTPUTS: tuple[str, ...] = ("probability",)


@dataclass(frozen=True)
class Bundle:
    """A bundle folder's card, CT gate and study head, with the server's overrides."""

    path: Path
    card: ModelCard
    gate: CTGate
    study_head: StudyHead | None = None
    # The "CT in any window" gate (``ct_any_window.npz``, optional): asked only about what
    # ``gate`` refuses, CT there is "CT outside the model's range" (issue 26).
    any_gate: CTGate | None = None
    threshold_override: float | None = None  # of the default (sensitive) operating point
    window_override: tuple[float, float] | None = None  # (level, width) in HU

    @classmethod
    def load(cls, model_dir: str | Path) -> Bundle:
        """Read and check the bundle; ``CardError`` / ``GateFileError`` name the file and
        the field (a study head that disagrees with the card: ``CardError``)."""
        path = Path(model_dir)
        card = load_card(path)
        gate = CTGate.load(path, card.gate.threshold)
        head = None
        if card.study.head is not None:
            from ml_model.inference.study_head import StudyHead, StudyHeadError

            try:
                head = StudyHead.for_card(path, card.study.head)
            except StudyHeadError as exc:
                raise CardError(str(exc)) from exc
        return cls(path, card, gate, head, gate.any_window(path))

    def with_overrides(
        self,
        threshold: float | None = None,
        window_level: float | None = None,
        window_width: float | None = None,
    ) -> Bundle:
        """This bundle with the server's overrides (each None: the card's value). They
        replace earlier overrides rather than adding to them."""
        window = None
        if window_level is not None or window_width is not None:
            card = self.card.input.window
            window = (
                card.level if window_level is None else window_level,
                card.width if window_width is None else window_width,
            )
        return dataclasses.replace(self, threshold_override=threshold, window_override=window)

    # ---- what the model is -----------------------------------------------------------

    @property
    def img_size(self) -> int:
        """The model takes (N, img_size, img_size, 3) uint8 pixels."""
        return self.card.input.size

    @property
    def window(self) -> tuple[float, float]:
        """The DICOM window (level, width) in HU: the card's unless overridden."""
        if self.window_override is not None:
            return self.window_override
        return self.card.input.window.as_pair()

    @property
    def context(self) -> Context | None:
        """A 2.5D bundle's neighbours-as-channels (None: one slice in all three)."""
        return self.card.input.context

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the bundle answers: P(fracture) of a slice, and a study bundle's
        patient_overall and C1..C7."""
        return STUDY_OUTPUTS if self.study_head is not None else SLICE_OUTPUTS

    # ---- how it decides ----------------------------------------------------------------

    @property
    def gate_threshold(self) -> float:
        """A slice is CT when the gate's logit is at or above this (the card's)."""
        return self.card.gate.threshold

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The slice threshold of ``operating_point`` (ValueError for an unknown one)."""
        if self.threshold_override is not None and operating_point == DEFAULT_OPERATING_POINT:
            return self.threshold_override
        return self.card.threshold(operating_point)

    def stored_study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The card's threshold on the study score (the slice threshold if none is stored)."""
        return self.card.study_threshold(operating_point)

    @property
    def top_k(self) -> int:
        """Slices averaged into a ``top{top_k}_mean`` study score (and the slices shown)."""
        return self.card.study.top_k

    @property
    def aggregation(self) -> str:
        """How slice scores become the study score (the card's ``study.aggregation``):
        ``study_head`` or ``top{top_k}_mean`` (the card refuses any other)."""
        return self.card.study.aggregation

    @property
    def uses_study_head(self) -> bool:
        """The study score is the study head's patient_overall (else the top-k mean of the
        slice probabilities; a study bundle's head then still gives C1..C7)."""
        return self.aggregation == STUDY_HEAD_AGGREGATION


def as_bundle(bundle: Bundle | str | Path) -> Bundle:
    """``bundle`` itself, or the bundle loaded from a folder."""
    return bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)

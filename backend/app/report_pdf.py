"""A study answer as a PDF report to take away (``POST /report``).

Rendered with fpdf2's core fonts (Helvetica, Windows-1252): no font files, no network.
What it holds: the verdict and score, the operating point and its threshold, a study
bundle's per-vertebra probabilities (C1-C7, each with a bar), the top slices with their
Grad-CAM heatmaps, the model's name and version, the intended use ("Decision support — not a
diagnosis") and the model card's known limits.

One slice is reported as a slice (its own score, no aggregation), a series as a study. A
refused slice or series ("Not a CT slice", or "CT outside the model's range" with its reason in
the words of :data:`ml_model.inference.verdict.OUTSIDE_REASONS` and what to send instead) gets
no score at all: the score of an input the model cannot read means nothing, and a "0 %" would
read as a confident "normal".

What ties it to its exam: the study and series instance UIDs, accession number and study
date (:class:`SeriesIdentity`, from the first slice's DICOM header) when there are any and
the ``REPORT_IDENTIFIERS`` setting is on. What it never holds: the patient's name, ID or birth
date. Everything else comes from the :class:`StudyResponse` (scores, positions, heatmaps), and
slices are named by their place in the series, not by their file names (which a PACS export
often builds from patient or accession numbers).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from backend.app.schemas import StudyResponse
from ml_model.config import RESULT_OUTSIDE_RANGE
from ml_model.imaging.dicom import SeriesIdentity
from ml_model.inference.verdict import OUTSIDE_REASONS

INTENDED_USE = "Decision support — not a diagnosis"
HEATMAP_NOTE = "Grad-CAM heatmap: where the model looked — not a fracture outline."
RESULT_POSITIVE = "Potentially Fracture"
RESULT_NEGATIVE = "Normal"

# Model-card keys whose entries are the model's known limits (the web app reads the same).
LIMIT_KEYS = ("limitations", "known_limitations", "caveats")

_TEXT_FALLBACKS = str.maketrans({"≥": ">=", "≤": "<=", "≈": "~", "→": "->", "←": "<-"})
_ENCODING = "windows-1252"

_INK = (33, 37, 41)
_MUTED = (95, 99, 104)
_TONES = {
    RESULT_POSITIVE: (178, 34, 34),  # warning red
    RESULT_NEGATIVE: (25, 110, 60),  # calm green
}
_NEUTRAL = (85, 85, 85)


def text(value: object) -> str:
    """``value`` as text the core fonts can draw (anything else becomes ``?``)."""
    cleaned = str(value).translate(_TEXT_FALLBACKS)
    return cleaned.encode(_ENCODING, errors="replace").decode(_ENCODING)


def percent(probability: float) -> str:
    pct = probability * 100.0
    if 0 < pct < 1:
        return "<1%"
    if 99 < pct < 100:
        return ">99%"
    return f"{pct:.0f}%"


def known_limits(card: Mapping[str, Any]) -> list[str]:
    """The model card's limits, in card order, from each of :data:`LIMIT_KEYS`."""
    limits: list[str] = []
    for key in LIMIT_KEYS:
        value = card.get(key)
        if isinstance(value, str):
            limits.append(value)
        elif isinstance(value, Iterable) and not isinstance(value, Mapping):
            limits.extend(str(item) for item in value if item)
    return list(dict.fromkeys(limits))


def describe_aggregation(aggregation: str) -> str:
    if aggregation.startswith("top") and aggregation.endswith("_mean"):
        k = aggregation[3:-5]
        if k.isdigit():
            return (
                "the highest slice probability"
                if int(k) == 1
                else f"the mean of the {k} highest slice probabilities"
            )
    return {"max": "the highest slice probability", "mean": "the mean slice probability"}.get(
        aggregation, aggregation.replace("_", " ")
    )


def position_text(position: float, unit: str | None) -> str:
    value = f"{position:g}" if float(position).is_integer() else f"{position:.1f}"
    return f"{value} mm" if unit == "mm" else f"slice number {value}"


def _png(data: str | None) -> io.BytesIO | None:
    if not data:
        return None
    try:
        return io.BytesIO(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        return None


class _Report(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.core_fonts_encoding = _ENCODING
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(16, 16, 16)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("helvetica", size=8)
        self.set_text_color(*_MUTED)
        self.cell(0, 5, text(f"{INTENDED_USE}.  Page {self.page_no()}/{{nb}}"), align="C")

    def heading(self, title: str) -> None:
        self.ln(3)
        self.set_font("helvetica", "B", 12)
        self.set_text_color(*_INK)
        self.cell(0, 7, text(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def para(self, body: str, size: float = 10, color: tuple[int, int, int] = _INK) -> None:
        self.set_font("helvetica", size=size)
        self.set_text_color(*color)
        self.multi_cell(0, size * 0.5, text(body), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def fact(self, label: str, value: str) -> None:
        self.set_font("helvetica", "B", 10)
        self.set_text_color(*_MUTED)
        self.cell(48, 6, text(label))
        self.set_font("helvetica", size=10)
        self.set_text_color(*_INK)
        self.multi_cell(0, 6, text(value), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


STUDY_HEAD_SCORE = "the study head's probability of a fracture in C1-C7, from every slice in order"
VERTEBRAE_NOTE = (
    "P(fracture) of each cervical vertebra from the study head, which reads every slice of "
    "the series; the study score is its P(fracture anywhere in C1-C7)."
)


def vertebra_rows(study: StudyResponse) -> list[tuple[str, float]]:
    """(name, probability) of C1..C7 in order; empty for a slice bundle's answer."""
    vertebrae = study.vertebrae
    if vertebrae is None:
        return []
    return [(name, float(value)) for name, value in vertebrae.model_dump().items()]


def _vertebrae(pdf: _Report, rows: list[tuple[str, float]]) -> None:
    """One line per vertebra: its name, its probability and a bar of that length."""
    bar_width = 80.0
    for name, probability in rows:
        y = pdf.get_y()
        pdf.set_font("helvetica", "B", 10)
        pdf.set_text_color(*_INK)
        pdf.cell(14, 6, text(name))
        pdf.set_font("helvetica", size=10)
        pdf.cell(18, 6, text(percent(probability)), align="R")
        x = pdf.get_x() + 4
        pdf.set_draw_color(*_MUTED)
        pdf.rect(x, y + 1.5, bar_width, 3)
        if probability > 0:
            pdf.set_fill_color(*_MUTED)
            pdf.rect(x, y + 1.5, bar_width * min(1.0, probability), 3, style="F")
        pdf.ln(6)


def _top_slices(pdf: _Report, study: StudyResponse, unit: str | None) -> None:
    """The top slices two to a row: where each lies, its probability, its heatmap."""
    gap = 6.0
    width = (pdf.epw - gap) / 2
    tops = list(enumerate(study.top_slices, start=1))
    for start in range(0, len(tops), 2):
        row = [(rank, top, _png(top.heatmap_png_base64)) for rank, top in tops[start : start + 2]]
        image_h = width if any(image for _, _, image in row) else 0.0
        if pdf.get_y() + 12 + image_h > pdf.page_break_trigger:
            pdf.add_page()
        y = pdf.get_y()
        for column, (rank, top, image) in enumerate(row):
            x = pdf.l_margin + column * (width + gap)
            pdf.set_xy(x, y)
            pdf.set_font("helvetica", "B", 10)
            pdf.set_text_color(*_INK)
            pdf.multi_cell(
                width,
                5,
                text(
                    (
                        f"The slice, {position_text(top.position, unit)}"
                        if study.slice_count == 1
                        else f"Top {rank}: slice {top.index + 1} of {study.slice_count}, "
                        f"{position_text(top.position, unit)}"
                    )
                    + f"\nfracture probability {percent(top.prediction)}"
                ),
                align="L",
            )
            if image:
                pdf.image(image, x=x, y=y + 11, w=width, h=width, keep_aspect_ratio=True)
        pdf.set_xy(pdf.l_margin, y + 12 + image_h)


NOT_JUDGED = "No score is given: the score of an image the model cannot judge means nothing."


def refusal_text(study: StudyResponse, window: tuple[float, float] | None) -> str:
    """Why no fracture call was made, in plain words, and what to send instead: the reason of
    "CT outside the model's range" (:data:`OUTSIDE_REASONS`, as the web app says it; with
    ``window`` for the reason ``window``, the model's own window as the other way to export),
    else the "Not a CT slice" text."""
    single = study.slice_count == 1
    reason = study.outside_reason.value if study.outside_reason else None
    if str(study.result) != RESULT_OUTSIDE_RANGE or reason not in OUTSIDE_REASONS:
        return (
            (
                "This image does not look like an axial CT slice of the neck"
                if single
                else "No slice looked like an axial CT slice of the neck"
            )
            + ", so no fracture call was made and no score is given. Send the axial neck "
            "slices themselves (DICOM from the scanner or PACS)."
        )
    words = OUTSIDE_REASONS[reason]
    if not single:
        words = f"None of the {study.slice_count} slices could be judged. {words}"
    if reason == "window" and window is not None:
        level, width = window
        words += (
            " Or export the slices in the model's own window: level "
            f"{level:g} HU, width {width:g} HU."
        )
    return f"{words} {NOT_JUDGED}"


def slice_counts(study: StudyResponse) -> str:
    """The series' slices: scored, at or above the threshold, left out (by answer and reason),
    files not read."""
    outside = Counter(
        s.outside_reason.value
        for s in study.slices
        if s.in_distribution is False and s.outside_reason
    )
    not_ct = sum(1 for s in study.slices if s.in_distribution is False and not s.outside_reason)
    above = sum(
        1
        for s in study.slices
        if s.in_distribution is not False and s.prediction >= study.threshold
    )
    left_out = f"{not_ct} not a CT slice"
    if outside:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(outside.items()))
        left_out = (
            f"{sum(outside.values())} CT outside the model's range ({reasons}) and {left_out}"
        )
    return (
        f"{study.slice_count} scored, {above} at or above the threshold, {left_out} (left "
        f"out), {len(study.errors)} files not read"
    )


def exam_rows(exam: SeriesIdentity) -> list[tuple[str, str]]:
    """(label, value) of each identifier the exam has, in the order a PACS search uses."""
    rows = [
        ("Accession number", exam.accession_number),
        ("Study date", exam.study_date),
        ("Study instance UID", exam.study_uid),
        ("Series instance UID", exam.series_uid),
    ]
    return [(label, value) for label, value in rows if value]


def render_report(
    study: StudyResponse,
    card: Mapping[str, Any],
    *,
    position_unit: str | None = None,
    generated: datetime | None = None,
    exam: SeriesIdentity | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """The PDF bytes of the report on ``study`` (the model card gives use and limits;
    ``exam``, when given, the identifiers that tie it to its exam; ``window``, the model's
    DICOM window (level, width) in HU, named as what to export instead of a CT slice in
    another window)."""
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    # `position_unit` ("mm" for DICOM geometry) is a newer StudyResponse field: read it when there.
    unit = position_unit or getattr(study, "position_unit", None)
    result = str(study.result)
    refused = result not in (RESULT_POSITIVE, RESULT_NEGATIVE)
    single = study.slice_count == 1
    model = f"{study.model.name} (version {study.model.version})"

    pdf = _Report()
    pdf.set_title("Cervical-spine CT fracture triage report")
    pdf.set_subject(INTENDED_USE)
    pdf.set_creator(text(model))
    pdf.add_page()

    pdf.set_font("helvetica", "B", 16)
    pdf.set_text_color(*_INK)
    pdf.cell(0, 9, "Cervical-spine CT fracture triage", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "B", 11)
    pdf.set_text_color(*_TONES[RESULT_POSITIVE])
    pdf.cell(0, 6, text(f"{INTENDED_USE}."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    reader = "slice" if single else "study"
    pdf.para(
        f"Every {reader} must still be read by a qualified reader. This report names no "
        "patient; slices are numbered in series order, head to foot. Generated "
        f"{when}.",
        size=9,
        color=_MUTED,
    )
    if exam is not None:
        pdf.heading("Exam")
        for label, value in exam_rows(exam):
            pdf.fact(label, value)

    pdf.heading("Result (one slice)" if single else "Result (study)")
    pdf.set_font("helvetica", "B", 14)
    pdf.set_text_color(*_TONES.get(result, _NEUTRAL))
    pdf.cell(0, 8, text(result), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    rows = vertebra_rows(study)
    if refused:
        pdf.para(refusal_text(study, window))
    elif single and not rows:
        pdf.fact(
            "Slice score",
            f"{percent(study.prediction)} ({study.prediction:.3f}): the model's probability "
            "of a fracture on this slice",
        )
    else:
        pdf.fact("Study score", f"{percent(study.prediction)} ({study.prediction:.3f})")
    threshold_name = "slice threshold" if single and not rows else "study threshold"
    pdf.fact(
        "Operating point",
        f"{study.operating_point.value}: {threshold_name} {percent(study.threshold)} "
        f"({study.threshold:.3f})",
    )
    if not single or rows:
        how = STUDY_HEAD_SCORE if rows else describe_aggregation(study.aggregation)
        pdf.fact("How the score is made", how)
        pdf.fact("Slices", slice_counts(study))
    pdf.fact("Model", model)

    if rows:
        pdf.heading("Vertebrae (C1-C7)")
        _vertebrae(pdf, rows)
        pdf.para(VERTEBRAE_NOTE, size=9, color=_MUTED)

    pdf.heading("The slice" if single else "Top slices")
    if not study.top_slices:
        pdf.para("None: no slice was scored.")
    _top_slices(pdf, study, unit)
    if any(top.heatmap_png_base64 for top in study.top_slices):
        pdf.para(HEATMAP_NOTE, size=9, color=_MUTED)

    pdf.heading("Intended use")
    intended = card.get("intended_use")
    pdf.para(f"{INTENDED_USE}. {intended}" if isinstance(intended, str) else f"{INTENDED_USE}.")

    pdf.heading("Known limits (model card)")
    limits = known_limits(card)
    for limit in limits or ["The model card lists no limits."]:
        pdf.set_font("helvetica", size=9)
        pdf.set_text_color(*_INK)
        # One limit is never split across pages (it reads as one statement).
        height = pdf.multi_cell(pdf.epw - 5, 4.5, text(limit), dry_run=True, output="HEIGHT")
        assert isinstance(height, float | int)  # output="HEIGHT": the height alone
        if pdf.get_y() + height > pdf.page_break_trigger:
            pdf.add_page()
        pdf.cell(5, 4.5, "-")
        pdf.multi_cell(0, 4.5, text(limit), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1)

    return bytes(pdf.output())

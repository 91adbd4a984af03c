"""The inference core: the one path from bytes to a verdict.

decode (raster or DICOM, through the card's window) -> model input -> forward (calibrated
P(fracture) + the CT gate's logit) -> the gate's decision -> the operating point's
threshold -> the triage result. The API (single, batch, study), the CLI (files and
``--study``) and ``evaluate`` all call :class:`InferenceCore`; nothing else decides a
verdict. Where the forward runs (in-process TensorFlow, TF Serving, micro-batched or not)
is a :class:`~ml_model.inference.forward.Forward` handed in at construction (one of
``inference/runtimes.py``'s), beside the :class:`~ml_model.inference.bundle.Bundle` every
per-model fact comes from (input size, window, thresholds, study settings).

A study bundle (RSNA 2022: the card's ``input.context`` and ``study.head``) changes two
things, in study mode only. The model input of slice k is 2.5D: the decoded slice and its
neighbours ``input.context.spacing_mm`` above and below as the three channels
(``transforms.stack_neighbours`` over the ordered slices, the neighbours
``neighbour_offset(series spacing, context)`` slices apart), as in training. And the study
head reads every decoded slice's features, in head to foot order, for C1..C7
(:attr:`StudyVerdict.vertebrae`); the study score is what the card's ``study.aggregation``
names, chosen out of fold in training: the head's ``patient_overall``, or the top-k mean of
the slice probabilities the gate accepts. A single slice on a
2.5D bundle (``/predict``, ``/predict/batch``, ``predict`` on files) has no neighbours: its
model input is the slice replicated into the three channels, as for a slice bundle, which
is the 2.5D input of a slice whose neighbours look like itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ml_model.card import DEFAULT_OPERATING_POINT, OPERATING_POINTS, CardError
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.dicom import DicomImage
from ml_model.imaging.errors import ImageDecodeError
from ml_model.imaging.transforms import (
    decode_image,
    decode_source,
    gray_to_model_input,
    neighbour_offset,
    resize,
    stack_neighbours,
)
from ml_model.inference.batching import BatchedForward
from ml_model.inference.bundle import Bundle, as_bundle
from ml_model.inference.forward import Forward, ForwardOutput, ModelUnavailableError
from ml_model.inference.gate import ct_gate_margin
from ml_model.inference.study import (
    OrderedSlice,
    PositionUnit,
    SliceFile,
    StudyError,
    aggregate,
    arrange_slices,
    series_spacing_mm,
    threshold_for,
)
from ml_model.inference.verdict import Result, outside_reason_of, triage_result

if TYPE_CHECKING:
    from ml_model.inference.study_head import StudyHead

__all__ = [
    "DEFAULT_OPERATING_POINT",
    "OPERATING_POINTS",
    "InferenceCore",
    "SliceVerdict",
    "StudyVerdict",
]

# Slices per forward call of the many-slices loop: bounded memory for a 1,000-slice series.
SCORE_BATCH = 32
Key = TypeVar("Key")
# What the server wraps every decode in (``InferenceCore.with_decode_guard``).
DecodeGuard = Callable[[bytes], contextlib.AbstractContextManager[object]]


@dataclass(frozen=True)
class SliceVerdict:
    """What the product says about one slice."""

    result: Result
    probability: float  # calibrated P(fracture); reported even when the gate refused
    threshold: float  # of the operating point used
    in_distribution: bool  # the CT gate accepted the slice
    ct_gate_margin: float  # exp(gate threshold - gate logit): <= 1 is "a CT slice"
    # "CT outside the model's range": why ("window" / "region", verdict.OUTSIDE_REASONS).
    outside_reason: str | None = None


@dataclass
class StudyVerdict:
    """What the product says about one series, and every slice's share in it."""

    result: Result
    probability: float  # the study score (aggregation of in-distribution slices)
    threshold: float
    aggregation: str
    names: list[str]
    positions: list[float]
    probabilities: np.ndarray
    in_distribution: np.ndarray
    top_indices: list[int]
    errors: list[tuple[str, str]] = field(default_factory=list)
    position_unit: PositionUnit = "index"  # "mm" along the slice normal, or indices
    warnings: list[str] = field(default_factory=list)  # geometry: gaps, duplicates, orientation
    sources: list[OrderedSlice] = field(default_factory=list)  # the scored slices, in order
    # A study bundle: the study head's P(fracture) per vertebra, C1..C7 (None: a slice
    # bundle, or no slice the CT gate accepts).
    vertebrae: dict[str, float] | None = None
    # A 2.5D bundle: the neighbours of each slice in its model input, in slices (else None).
    context_offset: int | None = None
    # Per slice: why a refused CT slice is outside the model's range ("" for the others).
    outside_reasons: list[str] = field(default_factory=list)
    # The study's: set when the result is "CT outside the model's range".
    outside_reason: str | None = None


@dataclass(frozen=True)
class SourceVerdict:
    """One file through the whole path (:meth:`InferenceCore.judge_source`)."""

    gray: np.ndarray  # the decoded slice
    dicom: DicomImage | None  # a DICOM's decoded image (other windows, header facts)
    image: np.ndarray  # the model input
    verdict: SliceVerdict


@dataclass(frozen=True)
class FileVerdicts:
    """Many files through the whole path (:meth:`InferenceCore.judge_files`): the readable
    ones' indices (in input order), model inputs, forward output and verdicts, and each
    unreadable one's index and error."""

    indices: list[int]
    images: np.ndarray
    output: ForwardOutput
    verdicts: list[SliceVerdict]
    errors: list[tuple[int, Exception]]


class InferenceCore:
    """A loaded bundle and a forward; see the module docstring.

    ``bundle``: a :class:`Bundle` (with the server's overrides, ``Bundle.with_overrides``)
    or a bundle folder. ``forward``: None runs the bundle in-process on TensorFlow (the
    ``local`` runtime, the reference); ``gradcam``: None picks the forward's own.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path = DEFAULT_MODEL_DIR,
        forward: Forward | None = None,
        gradcam: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.bundle = as_bundle(bundle)  # CardError / GateFileError name the file
        if forward is None:
            from ml_model.inference.runtimes import load_runtime

            forward, own = load_runtime("local", self.bundle)
            gradcam = gradcam or own
        self.forward = forward
        self._check_features(forward)
        self._gradcam = gradcam or self._default_gradcam(forward)
        self.decode_guard: DecodeGuard | None = None

    @classmethod
    def on_runtime(cls, bundle: Bundle | str | Path, runtime: str) -> InferenceCore:
        """The bundle on the runtime named ``runtime`` (``inference/runtimes.py``), with
        that runtime's Grad-CAM."""
        from ml_model.inference.runtimes import load_runtime

        loaded = as_bundle(bundle)
        forward, gradcam = load_runtime(runtime, loaded)
        return cls(loaded, forward, gradcam=gradcam)

    def _check_features(self, forward: Forward) -> None:
        """A study bundle's head reads the slices' features: a graph without
        ``slice_features`` cannot feed it."""
        if self.bundle.study_head is not None and getattr(forward, "has_features", True) is False:
            raise CardError(
                f"{self.bundle.path}: the card has `study.head` but the model's graph "
                f"({type(forward).__name__}) returns no slice features; export the bundle again"
            )

    def _default_gradcam(self, forward: Forward) -> Callable[[np.ndarray], np.ndarray]:
        from ml_model.inference.forward import KerasForward
        from ml_model.inference.gradcam import GradCam, LazyGradCam

        if isinstance(forward, KerasForward):
            return GradCam(forward.model, self.bundle.card.gradcam_layer)
        return LazyGradCam(self.bundle.path, self.bundle.card.gradcam_layer)

    def with_bundle(self, bundle: Bundle) -> InferenceCore:
        """This core (same forward, same Grad-CAM) judging with ``bundle``: the same bundle
        with other overrides (``Bundle.with_overrides``: the server's settings)."""
        other = copy.copy(self)
        other.bundle = bundle
        return other

    # ---- the bundle ------------------------------------------------------------------

    @property
    def study_head(self) -> StudyHead | None:
        return self.bundle.study_head

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The slice threshold of ``operating_point`` (ValueError for an unknown one)."""
        return self.bundle.threshold(operating_point)

    def study_threshold(self, slices: int, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The threshold on the study score of a study of ``slices`` slices."""
        return threshold_for(
            slices,
            self.bundle.top_k,
            self.threshold(operating_point),
            self.bundle.stored_study_threshold(operating_point),
        )

    # ---- bytes -> model input -------------------------------------------------------

    def with_decode_guard(self, guard: DecodeGuard | None) -> InferenceCore:
        """This core (same bundle, same forward) with every decode run inside ``guard(data)``:
        a context manager the server uses to estimate a file's decoding memory from its
        headers and hold it in its budget (or refuse the file) before any pixel is decoded."""
        other = copy.copy(self)
        other.decode_guard = guard
        return other

    def _guarded(self, data: bytes) -> contextlib.AbstractContextManager[object]:
        return self.decode_guard(data) if self.decode_guard else contextlib.nullcontext()

    def decode(self, data: bytes, frame: int | None = None) -> np.ndarray:
        """Image or DICOM bytes -> 2-D uint8 slice (DICOM through the window; ``frame`` of a
        multi-frame DICOM); raises the errors of ``ml_model.imaging.errors``."""
        with self._guarded(data):
            return decode_image(data, *self.bundle.window, frame=frame)

    def decode_source(
        self, data: bytes, frame: int | None = None
    ) -> tuple[np.ndarray, DicomImage | None]:
        """:meth:`decode`, and for DICOM the decoded image itself (HU, header facts) so a
        caller can show it in other windows without decoding it again."""
        with self._guarded(data):
            return decode_source(data, *self.bundle.window, frame=frame)

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        """A decoded slice -> uint8 (S, S, 3), the forward's input: the slice in all three
        channels (on a 2.5D bundle too: one slice has no neighbours; see the module)."""
        return gray_to_model_input(gray, self.bundle.img_size)

    def context_offset(self, spacing_mm: float | None) -> int | None:
        """A 2.5D bundle: how many slices apart a slice's neighbours are in a series of
        ``spacing_mm`` (one slice when the spacing is unknown); None for a slice bundle."""
        context = self.bundle.context
        if context is None:
            return None
        if spacing_mm is None or spacing_mm <= 0:
            return 1
        return neighbour_offset(spacing_mm, context.spacing_mm)

    def study_model_input(
        self, study: StudyVerdict, index: int, gray: np.ndarray | None = None
    ) -> np.ndarray:
        """The model input slice ``index`` of a scored study had (for its Grad-CAM): the
        2.5D stack of it and its neighbours on a 2.5D bundle, else :meth:`model_input`.
        ``gray``: the slice already decoded (the caller's), so it is not decoded again."""
        source = study.sources[index]
        if gray is None:
            gray = self.decode(source.data, source.frame)
        if study.context_offset is None:
            return self.model_input(gray)
        offset, last = study.context_offset, len(study.sources) - 1
        lo, hi = max(0, index - offset), min(last, index + offset)
        resized = {index: resize(gray, self.bundle.img_size)}
        for i in {lo, hi} - {index}:
            item = study.sources[i]
            resized[i] = resize(self.decode(item.data, item.frame), self.bundle.img_size)
        return np.stack([resized[lo], resized[index], resized[hi]], axis=-1)

    # ---- model input -> verdict -----------------------------------------------------

    def scores(self, images: np.ndarray, from_hu: Sequence[bool] | None = None) -> ForwardOutput:
        """The forward's two outputs for uint8 images (N, S, S, 3) (or one (S, S, 3)), and
        why a refused CT slice is outside the model's range (``from_hu``: per image, made
        from HU through the bundle's window, i.e. a DICOM, whose window is never the
        reason)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[np.newaxis]
        expected = (self.bundle.img_size, self.bundle.img_size, 3)
        if images.shape[1:] != expected:
            raise ValueError(f"expected images of shape (N, {expected}), got {images.shape}")
        return self._outside_range(images, self.forward(images), from_hu)

    def _outside_range(
        self, images: np.ndarray, output: ForwardOutput, from_hu: Sequence[bool] | None
    ) -> ForwardOutput:
        """``output`` with, for each row the bundle's gate refused and its "CT in any
        window" gate takes for CT, why the model cannot judge it (issue 26); unchanged for
        a bundle without that gate."""
        gate = self.bundle.any_gate
        if gate is None:
            return output
        from ml_model.imaging.window_estimate import estimate_window

        reasons = np.full(len(output), "", dtype=object)
        refused = np.flatnonzero(~self.accepts(output))
        if refused.size:
            refused = refused[gate.logits(gate.features_np(images[refused])) >= gate.threshold]
        for row in refused.tolist():  # CT all the same: why the model cannot judge it
            in_window = bool(from_hu and from_hu[row]) or estimate_window(
                images[row, ..., 1]
            ).matches(*self.bundle.window)
            reasons[row] = outside_reason_of(in_window)
        return dataclasses.replace(output, outside_range=reasons)

    def accepts(self, output: ForwardOutput) -> np.ndarray:
        """Per row: the CT gate accepts it as a CT slice (bool (N,))."""
        return np.asarray(output.ct_logit >= self.bundle.gate_threshold)

    def judge(
        self, output: ForwardOutput, operating_point: str = DEFAULT_OPERATING_POINT
    ) -> list[SliceVerdict]:
        """The verdict on each row of a forward's output."""
        threshold = self.threshold(operating_point)
        inside = self.accepts(output)
        margin = ct_gate_margin(output.ct_logit, self.bundle.gate_threshold)
        outside = _outside(output)
        return [
            SliceVerdict(triage_result(p, threshold, ok, why), p, threshold, ok, m, why or None)
            for p, ok, m, why in zip(
                output.probability.tolist(), inside.tolist(), margin.tolist(), outside, strict=True
            )
        ]

    def classify(
        self,
        images: np.ndarray,
        operating_point: str = DEFAULT_OPERATING_POINT,
        from_hu: Sequence[bool] | None = None,
    ) -> list[SliceVerdict]:
        """uint8 model inputs -> one verdict each (``from_hu``: see :meth:`scores`)."""
        return self.judge(self.scores(images, from_hu), operating_point)

    def verdict(self, data: bytes, operating_point: str = DEFAULT_OPERATING_POINT) -> SliceVerdict:
        """Bytes -> verdict: the whole path for one file."""
        gray, dicom = self.decode_source(data)
        return self.classify(self.model_input(gray), operating_point, [_from_hu(dicom)])[0]

    def judge_source(
        self,
        read: Callable[[], bytes],
        operating_point: str = DEFAULT_OPERATING_POINT,
        check: Callable[[np.ndarray], object] | None = None,
    ) -> SourceVerdict:
        """One file, the whole path: ``read()`` its bytes, decode them (a DICOM's decoded
        image kept for previews), ``check`` the decoded slice (the caller may refuse it by
        raising), model input, verdict. A micro-batched forward is told while the file is
        read and decoded, so that a batch being formed waits for it."""
        with self._incoming():
            gray, dicom = self.decode_source(read())
            if check is not None:
                check(gray)
            image = self.model_input(gray)
            verdict = self.classify(image, operating_point, [_from_hu(dicom)])[0]
        return SourceVerdict(gray, dicom, image, verdict)

    def judge_files(
        self,
        sources: Sequence[Callable[[], bytes]],
        operating_point: str = DEFAULT_OPERATING_POINT,
        errors: tuple[type[Exception], ...] = (ImageDecodeError, OSError),
        progress: bool = False,
    ) -> FileVerdicts:
        """Many files -> verdicts + errors, the one loop of the batch route, ``predict`` and
        ``evaluate``: each source read and decoded (an exception of ``errors`` is that file's
        error, the others go on), then one forward over every readable file (the forward
        bounds its own batches)."""
        from tqdm.auto import tqdm

        failed: list[tuple[int, Exception]] = []

        def inputs() -> Iterator[tuple[int, np.ndarray, bool]]:
            for index, read in enumerate(tqdm(sources, unit="img", disable=not progress)):
                try:
                    gray, dicom = self.decode_source(read())
                except errors as exc:
                    failed.append((index, exc))
                    continue
                yield index, self.model_input(gray), _from_hu(dicom)

        readable, kept, output = self._score_inputs(inputs(), keep=True)
        size = self.bundle.img_size
        images = np.stack(kept) if kept else np.empty((0, size, size, 3), np.uint8)
        if output is None:
            empty = ForwardOutput(np.zeros(0), np.zeros(0))
            return FileVerdicts(readable, images, empty, [], failed)
        return FileVerdicts(readable, images, output, self.judge(output, operating_point), failed)

    def _score_inputs(
        self, inputs: Iterable[tuple[Key, np.ndarray, bool]], keep: bool = False
    ) -> tuple[list[Key], list[np.ndarray], ForwardOutput | None]:
        """The one loop of many slices: (key, model input, from HU) as they are decoded ->
        (keys, the inputs when ``keep``, one forward output in their order; None when there
        was none). Scored SCORE_BATCH at a time, so memory stays that of one batch however
        many slices come (plus what ``keep`` holds)."""
        keys: list[Key] = []
        kept: list[np.ndarray] = []
        parts: list[ForwardOutput] = []
        batch: list[np.ndarray] = []
        hu: list[bool] = []
        for key, image, from_hu in inputs:
            keys.append(key)
            batch.append(image)
            hu.append(from_hu)
            if keep:
                kept.append(image)
            if len(batch) == SCORE_BATCH:
                parts.append(self.scores(np.stack(batch), hu))
                batch, hu = [], []
        if batch:
            parts.append(self.scores(np.stack(batch), hu))
        return keys, kept, ForwardOutput.concat(parts) if parts else None

    def study(
        self,
        items: Sequence[SliceFile],
        operating_point: str = DEFAULT_OPERATING_POINT,
        progress: bool = False,
    ) -> StudyVerdict:
        """Order one series head to foot, score every decodable slice, aggregate the slices
        the gate accepts into the study score and judge it (a study bundle: the study
        head over every decoded slice). ``StudyError`` when the files are not one
        orderable series or nothing can be scored."""
        from tqdm.auto import tqdm

        order = arrange_slices(items)
        warnings = list(order.warnings)
        offset = self.context_offset(series_spacing_mm(order.slices, order.position_unit))
        if offset is not None and order.position_unit != "mm":
            warnings.append(
                "no slice spacing in mm (no DICOM geometry): each slice's neighbours in the "
                "model input are the next slices"
            )
        errors = list(order.errors)
        with tqdm(total=len(order.slices), unit="slice", disable=not progress) as bar:
            inputs = self._study_inputs(order.slices, offset, errors, bar.update)
            sources, _, output = self._score_inputs(inputs)
        if output is None:
            first = f" ({errors[0][0]}: {errors[0][1]})" if errors else ""
            raise StudyError(f"no slice in the study could be decoded{first}")
        names = [item.name for item in sources]
        positions = [item.position for item in sources]
        inside = self.accepts(output)
        probabilities = output.probability
        top_k = self.bundle.top_k
        ranked = np.where(inside, probabilities, -np.inf)
        top = [int(i) for i in np.argsort(-ranked, kind="stable")[:top_k] if np.isfinite(ranked[i])]
        # No slice the gate accepts: no call, so no score and no C1..C7.
        head_score, vertebrae = (
            self._head_scores(output) if top and self.study_head is not None else (0.0, None)
        )
        if self.bundle.uses_study_head:
            score = head_score
            threshold = self.bundle.stored_study_threshold(operating_point)
        else:  # the card's aggregation: top{top_k}_mean of the slices the gate accepts
            score = aggregate(probabilities[inside], top_k) if top else 0.0
            threshold = self.study_threshold(len(names), operating_point)
        refused = int(np.sum(~inside))
        outside = _outside(output)
        # No slice to judge, but CT slices the model cannot: the study is outside its range
        # for their most common reason.
        reasons = [why for why in outside if why]
        study_reason = None if top or not reasons else max(set(reasons), key=reasons.count)
        if top and refused and self.study_head is not None:
            warnings.append(
                f"the CT gate refused {refused} of {len(names)} slices: they are left out "
                "of the top slices; the study head reads every slice of the series, as "
                "in training"
            )
        return StudyVerdict(
            result=triage_result(score, threshold, bool(top), study_reason),
            probability=score,
            threshold=threshold,
            aggregation=self.bundle.aggregation,
            names=names,
            positions=positions,
            probabilities=probabilities,
            in_distribution=inside,
            top_indices=top,
            errors=errors,
            position_unit=order.position_unit,
            warnings=warnings,
            sources=sources,
            vertebrae=vertebrae,
            context_offset=offset,
            outside_reasons=outside,
            outside_reason=study_reason,
        )

    def _study_inputs(
        self,
        slices: Sequence[OrderedSlice],
        offset: int | None,
        errors: list[tuple[str, str]],
        advance: Callable[[int], object],
    ) -> Iterator[tuple[OrderedSlice, np.ndarray, bool]]:
        """Each decodable slice in order with its model input; undecodable ones go to
        ``errors``. A 2.5D bundle (``offset``): slice k's input stacks the decoded slices
        k - offset, k, k + offset (clamped at the ends), yielded once slice k + offset is
        decoded; only the slices still needed as neighbours are held."""
        held: list[np.ndarray] = []  # resized decoded slices, from decoded index `base` on
        waiting: list[OrderedSlice] = []  # decoded, input not yet yielded
        base = count = 0
        from_hu: dict[int, bool] = {}  # a waiting slice's: decoded from a DICOM's HU
        for item in slices:
            try:
                gray, dicom = self.decode_source(item.data, item.frame)
            except ImageDecodeError as exc:
                errors.append((item.name, str(exc)))
                continue
            finally:
                advance(1)
            if offset is None:
                yield item, self.model_input(gray), _from_hu(dicom)
                continue
            held.append(resize(gray, self.bundle.img_size))
            waiting.append(item)
            from_hu[id(item)] = _from_hu(dicom)
            count += 1
            if len(waiting) > offset:  # the oldest waiting slice has its last neighbour
                k = count - len(waiting)
                item = waiting.pop(0)
                yield item, self._stacked(held, base, k, count, offset), from_hu.pop(id(item))
                drop = max(0, k + 1 - offset - base)
                del held[:drop]
                base += drop
        while waiting:
            assert offset is not None  # only a 2.5D bundle's slices wait for neighbours
            k = count - len(waiting)
            item = waiting.pop(0)
            yield item, self._stacked(held, base, k, count, offset), from_hu.pop(id(item))

    @staticmethod
    def _stacked(held: list[np.ndarray], base: int, k: int, count: int, offset: int) -> np.ndarray:
        """Slice k's 2.5D input from the held slices (decoded index ``base`` on) of the
        ``count`` decoded so far: ``stack_neighbours`` over k's neighbourhood, which clamps
        at its ends exactly where the series ends."""
        lo, hi = max(0, k - offset), min(count - 1, k + offset)
        stack: np.ndarray = stack_neighbours(
            np.stack(held[lo - base : hi - base + 1]), k - lo, offset
        )
        return stack

    def _head_scores(self, output: ForwardOutput) -> tuple[float, dict[str, float]]:
        """The study head over the slices' features (head to foot): patient_overall, and
        C1..C7 by name."""
        assert self.study_head is not None  # loaded only with the card's study.head
        # Only a model server serving another graph than this bundle's gets here (502).
        if output.features is None:
            raise ModelUnavailableError(
                "the model returned no slice features for the study head (TF Serving must "
                "serve the SavedModel of the bundle in MODEL_DIR)",
                502,
            )
        if output.features.shape[1] != self.study_head.feature_dim:
            raise ModelUnavailableError(
                f"the model returned {output.features.shape[1]} features per slice; the card's "
                f"study.head.feature_dim is {self.study_head.feature_dim}",
                502,
            )
        named = self.study_head.named(output.features)
        return named.pop("patient_overall"), named

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM of one uint8 model input, in the frame of the whole slice."""
        return self._gradcam(image)

    # ---- lifecycle ------------------------------------------------------------------

    def _incoming(self) -> contextlib.AbstractContextManager[None]:
        """Announce an upcoming single-image call to a micro-batched forward (else a no-op)."""
        if isinstance(self.forward, BatchedForward):
            return self.forward.incoming()
        return contextlib.nullcontext()

    def warm_up(self, batch_sizes: Sequence[int] = (1,), gradcam: bool = True) -> None:
        """Run the forward once per batch size (and Grad-CAM) so no request pays for
        tracing; a forward that cannot answer yet (TF Serving starting) is left to
        ``is_ready``."""
        blank = np.zeros(
            (max(batch_sizes), self.bundle.img_size, self.bundle.img_size, 3), np.uint8
        )
        try:
            for size in batch_sizes:
                self.scores(blank[:size])
        except ModelUnavailableError:
            return
        if gradcam and not getattr(self._gradcam, "lazy", False):
            self.gradcam(blank[0])

    def is_ready(self) -> bool:
        return self.forward.is_ready()

    def close(self) -> None:
        self.forward.close()


def _outside(output: ForwardOutput) -> list[str]:
    """Per row: why a refused CT slice is outside the model's range ("" for the others)."""
    if output.outside_range is None:
        return [""] * len(output)
    return [str(why) for why in output.outside_range]


def _from_hu(dicom: DicomImage | None) -> bool:
    """The slice was made from HU through the bundle's window (a CT DICOM): its window is
    the model's, so never the reason it is outside the model's range."""
    return dicom is not None and dicom.is_hu

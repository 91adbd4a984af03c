import { useEffect, useRef, type Ref } from "react";
import { PREVIEW_WINDOWS, type StudySlice } from "../api/types";
import { RESULT_OUTSIDE_RANGE, refusalText } from "../lib/results";
import { formatPercent, type PreviewKind } from "../lib/files";
import { formatPosition } from "../lib/study";
import { wheelSteps } from "../lib/viewer";
import { ImageViewer } from "./ImageViewer";

export type PreviewState =
  | { status: "loading" }
  | { status: "ready"; url: string }
  /** No local image: DICOM, a zip member this browser cannot unpack, or a file not found. */
  | { status: "none"; kind: PreviewKind | "missing" };

export type HeatState =
  | { status: "loading" }
  /** `preview`: a DICOM slice's image from the same /predict answer, when the server sends it. */
  | { status: "done"; png: string; preview?: string | null }
  | { status: "error"; message: string };

interface Props {
  slice: StudySlice;
  index: number;
  count: number;
  rank?: number;
  threshold: number;
  /** "mm" when positions are DICOM geometry (the API's `position_unit`). */
  positionUnit?: string | null;
  preview: PreviewState;
  heat?: HeatState;
  /** Whether an on-demand heatmap can be asked for (the file is at hand). */
  canRequestHeatmap: boolean;
  onRequestHeatmap(): void;
  onStep(delta: number): void;
  /** The top slices, most suspicious first: one key (1, 2, …) or button away. */
  topIndices: number[];
  onSelect(index: number): void;
  stageRef?: Ref<HTMLDivElement>;
}

function Placeholder({ title, text }: { title: string; text: string }) {
  return (
    <div className="thumb__placeholder">
      <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false">
        <path d="M6 2h9l5 5v15H6V2Zm8 1.5V8h4.5M9 13h8M9 16h8M9 19h5" fill="none" stroke="currentColor" strokeWidth="1.5" />
      </svg>
      <span>{title}</span>
      <small>{text}</small>
    </div>
  );
}

const PLACEHOLDER: Record<PreviewKind | "missing", { title: string; text: string }> = {
  dicom: { title: "DICOM", text: "The server sends this slice's image with its heatmap: select Show heatmap" },
  other: { title: "No preview", text: "This format cannot be shown here" },
  image: { title: "No preview", text: "The image could not be shown" },
  missing: { title: "No preview", text: "This file is not available in the browser" },
};

export function positionLabel(position: number, unit?: string | null): string {
  return unit === "mm" ? `${formatPosition(position)} mm` : `position ${formatPosition(position)}`;
}

/**
 * The selected slice, large, with its Grad-CAM heatmap as an overlay, and what the study made
 * of it. The mouse wheel anywhere over this panel moves through the slices (Ctrl/⌘ + wheel
 * zooms); the keys are the study reader's (see StudyView).
 */
export function StudySliceViewer({
  slice,
  index,
  count,
  rank,
  threshold,
  positionUnit,
  preview,
  heat,
  canRequestHeatmap,
  onRequestHeatmap,
  onStep,
  topIndices,
  onSelect,
  stageRef,
}: Props) {
  const ood = slice.in_distribution === false;
  const section = useRef<HTMLElement>(null);
  const pending = useRef(0);
  const step = useRef(onStep);
  step.current = onStep;

  useEffect(() => {
    const el = section.current;
    if (!el) return;
    const onWheel = (event: WheelEvent) => {
      if (event.ctrlKey || event.metaKey || !event.deltaY) return; // zoom, or sideways
      event.preventDefault();
      const { steps, pending: rest } = wheelSteps(pending.current, event.deltaY, event.deltaMode);
      pending.current = rest;
      if (steps) step.current(steps);
    };
    el.addEventListener("wheel", onWheel, { passive: false });
    return () => el.removeEventListener("wheel", onWheel);
  }, []);

  const base =
    preview.status === "ready"
      ? { src: preview.url, alt: `Slice ${slice.name}`, testId: "viewer-image" }
      : heat?.status === "done" && heat.preview
        ? { src: `data:image/png;base64,${heat.preview}`, alt: `Slice ${slice.name}`, testId: "viewer-image" }
        : null;
  // Which window the image is in: the browser shows a PNG/JPEG's own greys; a DICOM slice's
  // image comes from the server with its heatmap, in the model's window (its default).
  const windowCaption = !base
    ? null
    : preview.status === "ready"
      ? "Shown as the file holds it (the greys it was exported with)"
      : PREVIEW_WINDOWS.find((w) => w.id === "model")?.caption;
  const overlay =
    heat?.status === "done" && !ood
      ? { src: `data:image/png;base64,${heat.png}`, alt: `Grad-CAM heatmap overlaid on ${slice.name}`, testId: "viewer-heatmap" }
      : null;
  const place = preview.status === "none" ? PLACEHOLDER[preview.kind] : null;

  return (
    <section ref={section} className="panel sv" aria-labelledby="sv-title" data-testid="study-viewer">
      <header className="sv__head">
        <div className="sv__title">
          <h2 id="sv-title">
            Slice {index + 1} <span className="muted">of {count}</span>
          </h2>
          <p className="sv__name" title={slice.name} data-testid="viewer-name">
            {slice.name} · {positionLabel(slice.position, positionUnit)}
          </p>
        </div>
        <div className="sv__nav">
          <button
            type="button"
            className="icon-btn icon-btn--bordered"
            onClick={() => onStep(-1)}
            disabled={index === 0}
            aria-label="Previous slice"
            aria-keyshortcuts="ArrowUp ArrowLeft"
          >
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="m12.5 4-6 6 6 6" fill="none" stroke="currentColor" strokeWidth="2" />
            </svg>
          </button>
          <button
            type="button"
            className="icon-btn icon-btn--bordered"
            onClick={() => onStep(1)}
            disabled={index === count - 1}
            aria-label="Next slice"
            aria-keyshortcuts="ArrowDown ArrowRight"
          >
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="m7.5 4 6 6-6 6" fill="none" stroke="currentColor" strokeWidth="2" />
            </svg>
          </button>
        </div>
      </header>

      <div className="sv__body">
        <ImageViewer
          base={base}
          overlay={overlay}
          label={`Slice ${index + 1} of ${count}. Mouse wheel or arrow keys: previous or next slice; 1 to ${Math.max(1, topIndices.length)}: top slices; plus and minus: zoom`}
          placeholder={place ? <Placeholder {...place} /> : null}
          busy={preview.status === "loading" || heat?.status === "loading"}
          stageRef={stageRef}
          className="sv__viewer"
          testId="sv-viewer"
        />

        <div className="sv__facts">
          {windowCaption ? (
            <p className="sv__note" data-testid="viewer-window">
              {windowCaption}
            </p>
          ) : null}
          {ood && slice.outside_reason ? (
            <>
              <span className="badge badge--neutral badge--outside badge--small">{RESULT_OUTSIDE_RANGE}</span>
              <p className="sv__note">
                {refusalText({ result: RESULT_OUTSIDE_RANGE, outside_reason: slice.outside_reason })} It was
                left out of the study score.
              </p>
            </>
          ) : ood ? (
            <>
              <span className="badge badge--neutral badge--small">Not a CT slice</span>
              <p className="sv__note">
                This image does not look like an axial CT slice, so it was left out of the study score.
              </p>
              <p className="sv__note">Not scored: no heatmap for an image that is not a CT slice.</p>
            </>
          ) : (
            <>
              <p className="sv__prob">
                <span className="sv__prob-label">Slice fracture probability</span>
                <span
                  className={`sv__prob-value${slice.prediction >= threshold ? " sv__prob-value--above" : ""}`}
                  data-testid="viewer-probability"
                >
                  {formatPercent(slice.prediction)}
                </span>
              </p>
              {rank ? (
                <p className="sv__note">
                  <span className="tag tag--top">Top {rank}</span> One of the most suspicious slices: it counts towards
                  the study score.
                </p>
              ) : (
                <p className="sv__note">
                  {slice.prediction >= threshold ? "Above" : "Below"} the study threshold of {formatPercent(threshold)}.
                  Only the top slices count towards the study score.
                </p>
              )}
              {heat?.status === "loading" ? (
                <p className="sv__note" role="status">
                  <span className="spinner" aria-hidden="true" /> Computing heatmap…
                </p>
              ) : heat?.status !== "done" ? (
                <div className="sv__heat">
                  {heat?.status === "error" && (
                    <p className="sv__heat-error" role="alert">
                      Heatmap unavailable: {heat.message}
                    </p>
                  )}
                  {canRequestHeatmap ? (
                    <button type="button" className="btn btn--ghost btn--small" onClick={onRequestHeatmap}>
                      Show heatmap
                    </button>
                  ) : (
                    !heat && <span className="muted">No heatmap: the file is not available in the browser.</span>
                  )}
                </div>
              ) : null}
            </>
          )}
          {topIndices.length > 0 && (
            <div className="sv__tops">
              <span className="sv__prob-label">Top slices</span>
              <div className="sv__top-buttons">
                {topIndices.map((i, r) => (
                  <button
                    key={i}
                    type="button"
                    className={`btn btn--small ${i === index ? "btn--primary" : "btn--ghost"}`}
                    onClick={() => onSelect(i)}
                    aria-keyshortcuts={r < 9 ? String(r + 1) : undefined}
                    aria-pressed={i === index}
                    data-testid="top-jump"
                  >
                    Top {r + 1}
                    <span className="visually-hidden">: slice {i + 1}</span>
                  </button>
                ))}
              </div>
            </div>
          )}
          <p className="sv__hint sv__keys">
            <kbd>↑</kbd>
            <kbd>↓</kbd> or the mouse wheel: previous / next slice · <kbd>1</kbd>–
            <kbd>{Math.min(9, Math.max(1, topIndices.length))}</kbd>: top slices · <kbd>+</kbd>
            <kbd>−</kbd> or Ctrl + wheel: zoom · drag: pan
          </p>
        </div>
      </div>
    </section>
  );
}

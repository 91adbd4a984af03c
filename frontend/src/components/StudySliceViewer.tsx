import type { StudySlice } from "../api/types";
import { formatPercent, type PreviewKind } from "../lib/files";
import { formatPosition } from "../lib/study";

export type PreviewState =
  | { status: "loading" }
  | { status: "ready"; url: string }
  /** No local image: DICOM, a zip member this browser cannot unpack, or a file not found. */
  | { status: "none"; kind: PreviewKind | "missing" };

export type HeatState =
  | { status: "loading" }
  | { status: "done"; png: string }
  | { status: "error"; message: string };

interface Props {
  slice: StudySlice;
  index: number;
  count: number;
  rank?: number;
  threshold: number;
  preview: PreviewState;
  heat?: HeatState;
  /** Whether an on-demand heatmap can be asked for (the file is at hand). */
  canRequestHeatmap: boolean;
  onRequestHeatmap(): void;
  onStep(delta: number): void;
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
  dicom: { title: "DICOM", text: "Browsers cannot display DICOM; the heatmap shows this slice" },
  other: { title: "No preview", text: "This format cannot be shown here" },
  image: { title: "No preview", text: "The image could not be shown" },
  missing: { title: "No preview", text: "This file is not available in the browser" },
};

/** The selected slice: its image next to its Grad-CAM heatmap, and what the study made of it. */
export function StudySliceViewer({
  slice,
  index,
  count,
  rank,
  threshold,
  preview,
  heat,
  canRequestHeatmap,
  onRequestHeatmap,
  onStep,
}: Props) {
  const ood = slice.in_distribution === false;
  return (
    <section className="panel sv" aria-labelledby="sv-title" data-testid="study-viewer">
      <header className="sv__head">
        <div className="sv__title">
          <h2 id="sv-title">
            Slice {index + 1} <span className="muted">of {count}</span>
          </h2>
          <p className="sv__name" title={slice.name} data-testid="viewer-name">
            {slice.name} · position {formatPosition(slice.position)}
          </p>
        </div>
        <div className="sv__nav">
          <button
            type="button"
            className="icon-btn icon-btn--bordered"
            onClick={() => onStep(-1)}
            disabled={index === 0}
            aria-label="Previous slice"
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
          >
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="m7.5 4 6 6-6 6" fill="none" stroke="currentColor" strokeWidth="2" />
            </svg>
          </button>
        </div>
      </header>

      <div className="sv__body">
        <figure className="sv__figure">
          <div className="thumb thumb--large">
            {preview.status === "ready" ? (
              <img src={preview.url} alt={`Slice ${slice.name}`} data-testid="viewer-image" />
            ) : preview.status === "loading" ? (
              <div className="thumb__busy" aria-hidden="true">
                <span className="spinner" />
              </div>
            ) : (
              <Placeholder {...PLACEHOLDER[preview.kind]} />
            )}
          </div>
          <figcaption>Slice</figcaption>
        </figure>

        <figure className="sv__figure">
          <div className="thumb thumb--large">
            {heat?.status === "done" ? (
              <>
                <img
                  src={`data:image/png;base64,${heat.png}`}
                  alt={`Grad-CAM heatmap overlaid on ${slice.name}`}
                  data-testid="viewer-heatmap"
                />
                <span className="legend" aria-hidden="true">
                  <span>low</span>
                  <span className="legend__ramp" />
                  <span>high</span>
                </span>
              </>
            ) : heat?.status === "loading" ? (
              <div className="sv__heat-msg" role="status">
                <span className="spinner spinner--light" aria-hidden="true" />
                Computing heatmap…
              </div>
            ) : ood ? (
              <div className="sv__heat-msg">Not scored: no heatmap for an image that is not a CT slice.</div>
            ) : (
              <div className="sv__heat-msg">
                {heat?.status === "error" && (
                  <p className="sv__heat-error" role="alert">
                    Heatmap unavailable: {heat.message}
                  </p>
                )}
                {canRequestHeatmap ? (
                  <button type="button" className="btn btn--light btn--small" onClick={onRequestHeatmap}>
                    Show heatmap
                  </button>
                ) : (
                  !heat && <span>No heatmap: the file is not available in the browser.</span>
                )}
              </div>
            )}
          </div>
          <figcaption>Grad-CAM heatmap</figcaption>
        </figure>

        <div className="sv__facts">
          {ood ? (
            <>
              <span className="badge badge--neutral badge--small">Not a CT slice</span>
              <p className="sv__note">
                This image does not look like an axial CT slice, so it was left out of the study score.
              </p>
              <p className="refusal__score">
                Model score {formatPercent(slice.prediction)} <span>· not used</span>
              </p>
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
            </>
          )}
          {heat?.status === "done" && !ood && (
            <p className="sv__hint">
              Warm colours mark the regions that raised the fracture score most: where the model looked, not where a
              fracture is.
            </p>
          )}
        </div>
      </div>
    </section>
  );
}

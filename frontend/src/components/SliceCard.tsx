import { useRef, useState } from "react";
import { describeError } from "../api/client";
import { formatBytes, formatPercent } from "../lib/files";
import { REFUSAL_TEXT, isRefused, resultTone } from "../lib/results";
import type { SliceItem } from "../state";
import { ErrorNotice } from "./ErrorNotice";
import { ProbabilityBar } from "./ProbabilityBar";
import { ResultBadge } from "./ResultBadge";

interface Props {
  item: SliceItem;
  busy: boolean;
  onRemove(id: string): void;
  onToggleHeatmap(id: string): void;
}

function Placeholder({ kind }: { kind: SliceItem["kind"] }) {
  return (
    <div className="thumb__placeholder">
      <svg viewBox="0 0 24 24" aria-hidden="true" focusable="false">
        <path
          d="M6 2h9l5 5v15H6V2Zm8 1.5V8h4.5M9 13h8M9 16h8M9 19h5"
          fill="none"
          stroke="currentColor"
          strokeWidth="1.5"
        />
      </svg>
      <span>{kind === "dicom" ? "DICOM" : "No preview"}</span>
      <small>{kind === "dicom" ? "Browsers cannot display DICOM; it is analysed on the server" : "Preview not available"}</small>
    </div>
  );
}

function Legend({ inline }: { inline?: boolean }) {
  return (
    <span className={inline ? "legend legend--inline" : "legend"} aria-hidden="true">
      <span>low</span>
      <span className="legend__ramp" />
      <span>high</span>
    </span>
  );
}

export function SliceCard({ item, busy, onRemove, onToggleHeatmap }: Props) {
  const { result, error, status } = item;
  const [previewFailed, setPreviewFailed] = useState(false);
  const heatmap = result?.heatmap_png_base64 ? `data:image/png;base64,${result.heatmap_png_base64}` : null;
  const tone = result ? resultTone(result.result) : null;
  const refused = result ? isRefused(result) : false;
  // No heatmap for a refused input: where the model "looked" in a photo means nothing.
  const showingHeatmap = item.showHeatmap && !!heatmap && !refused;
  const err = error ? describeError(error.status, error.detail) : null;
  const titleId = `${item.id}-title`;
  const dialog = useRef<HTMLDialogElement>(null);
  const shownSrc = showingHeatmap ? heatmap : item.previewUrl && !previewFailed ? item.previewUrl : null;
  const shownAlt = showingHeatmap ? `Grad-CAM heatmap overlaid on ${item.file.name}` : `${item.file.name}, enlarged`;
  const openLarge = () => {
    const d = dialog.current;
    if (!d) return;
    if (typeof d.showModal === "function") d.showModal();
    else d.setAttribute("open", "");
  };
  const closeLarge = () => {
    const d = dialog.current;
    if (!d) return;
    if (typeof d.close === "function") d.close();
    else d.removeAttribute("open");
  };

  return (
    <article
      id={item.id}
      className={`card card--${status}${tone ? ` card--${tone}` : ""}`}
      aria-labelledby={titleId}
      aria-busy={status === "analysing"}
      data-testid="slice-card"
    >
      <div className="thumb">
        {showingHeatmap ? (
          <img src={heatmap!} alt={`Grad-CAM heatmap overlaid on ${item.file.name}`} data-testid="heatmap-image" />
        ) : item.previewUrl && !previewFailed ? (
          <img
            src={item.previewUrl}
            alt={`Preview of ${item.file.name}`}
            data-testid="preview-image"
            onError={() => setPreviewFailed(true)}
          />
        ) : (
          <Placeholder kind={previewFailed ? "other" : item.kind} />
        )}
        {(status === "analysing" || (item.showHeatmap && item.heatmapLoading)) && (
          <div className="thumb__busy" aria-hidden="true">
            <span className="spinner" />
          </div>
        )}
        {showingHeatmap && <Legend />}
        {shownSrc && (
          <button type="button" className="thumb__zoom" onClick={openLarge} aria-label={`Enlarge ${item.file.name}`}>
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path
                d="M8.5 3a5.5 5.5 0 1 0 3.4 9.8l3.9 3.9 1.1-1.1-3.9-3.9A5.5 5.5 0 0 0 8.5 3Zm0 1.6a3.9 3.9 0 1 1 0 7.8 3.9 3.9 0 0 1 0-7.8ZM7.7 6v1.7H6v1.6h1.7V11h1.6V9.3H11V7.7H9.3V6H7.7Z"
                fill="currentColor"
              />
            </svg>
          </button>
        )}
      </div>
      <dialog
        ref={dialog}
        className="viewer"
        aria-labelledby={`${item.id}-viewer-title`}
        onClick={(e) => e.target === dialog.current && closeLarge()}
      >
        <div className="viewer__head">
          <h3 id={`${item.id}-viewer-title`}>
            {item.file.name}
            {showingHeatmap ? " · Grad-CAM heatmap" : ""}
          </h3>
          <button type="button" className="icon-btn icon-btn--light" onClick={closeLarge} aria-label="Close">
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="m5 5 10 10M15 5 5 15" stroke="currentColor" strokeWidth="2" fill="none" />
            </svg>
          </button>
        </div>
        {shownSrc && <img src={shownSrc} alt={shownAlt} className="viewer__img" />}
        {showingHeatmap && (
          <p className="viewer__note">
            <Legend inline /> Warm colours mark the regions that raised the fracture score most. It shows where the
            model looked, not where a fracture is.
          </p>
        )}
      </dialog>

      <div className="card__body">
        <header className="card__head">
          <h3 id={titleId} className="card__title" title={item.file.name}>
            {item.file.name}
          </h3>
          <button
            type="button"
            className="icon-btn"
            onClick={() => onRemove(item.id)}
            disabled={busy && status === "analysing"}
            aria-label={`Remove ${item.file.name}`}
          >
            <svg viewBox="0 0 20 20" aria-hidden="true" focusable="false">
              <path d="m5 5 10 10M15 5 5 15" stroke="currentColor" strokeWidth="2" fill="none" />
            </svg>
          </button>
        </header>
        <p className="card__meta">
          {formatBytes(item.file.size)}
          {item.kind === "dicom" ? " · DICOM" : ""}
        </p>

        {status === "idle" && <p className="card__state">Ready to analyse</p>}
        {status === "analysing" && (
          <p className="card__state card__state--busy" role="status">
            Analysing…
          </p>
        )}

        {status === "error" && err && error && (
          <ErrorNotice
            title={err.title}
            hint={err.hint}
            detail={error.detail}
            status={error.status}
            testId="slice-error"
          />
        )}

        {status === "done" && result && tone && (
          <div className="result" data-testid="slice-result">
            <ResultBadge result={result.result} />
            {refused && (
              <div className="refusal" data-testid="refusal">
                <p>{REFUSAL_TEXT}</p>
                {typeof result.prediction === "number" && (
                  <p className="refusal__score" data-testid="unused-score">
                    Model score {formatPercent(result.prediction)} <span>· not used</span>
                  </p>
                )}
              </div>
            )}
            {!refused && typeof result.prediction === "number" && typeof result.threshold === "number" && (
              <ProbabilityBar
                probability={result.prediction}
                threshold={result.threshold}
                tone={tone}
                operatingPoint={result.operating_point}
              />
            )}
            <dl className="facts">
              <div>
                <dt>Operating point</dt>
                <dd>{result.operating_point}</dd>
              </div>
              <div>
                <dt>Model</dt>
                <dd data-testid="model-name">
                  {result.model?.name}
                  {result.model?.version
                    ? /^\d/.test(result.model.version)
                      ? ` v${result.model.version}`
                      : ` (${result.model.version})`
                    : ""}
                </dd>
              </div>
              {refused && typeof result.ood_distance === "number" && (
                <div>
                  <dt>Out-of-distribution score</dt>
                  <dd data-testid="ood-distance">
                    {result.ood_distance.toFixed(2)} <span className="muted">(limit 1.00)</span>
                  </dd>
                </div>
              )}
              {typeof result.latency_ms === "number" && (
                <div>
                  <dt>Time</dt>
                  <dd>{Math.round(result.latency_ms)} ms</dd>
                </div>
              )}
            </dl>
            {!refused && (
              <div className="heat-row">
                <button
                  type="button"
                  role="switch"
                  aria-checked={item.showHeatmap}
                  className="switch"
                  onClick={() => onToggleHeatmap(item.id)}
                  disabled={item.heatmapLoading}
                >
                  <span className="switch__track" aria-hidden="true">
                    <span className="switch__thumb" />
                  </span>
                  <span className="switch__label">Grad-CAM heatmap</span>
                </button>
                {item.heatmapLoading && (
                  <span className="card__note" role="status">
                    Computing heatmap…
                  </span>
                )}
              </div>
            )}
            {item.heatmapError && (
              <p className="card__note card__note--error" role="alert">
                Heatmap unavailable: {item.heatmapError}
              </p>
            )}
          </div>
        )}
      </div>
    </article>
  );
}

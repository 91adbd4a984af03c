import { useRef, useState } from "react";
import { ApiError, describeError, getReport } from "../api/client";
import { DEFAULT_PREVIEW_WINDOW, PREVIEW_WINDOWS, type OperatingPoint, type PreviewWindow } from "../api/types";
import { saveBlob } from "../lib/csv";
import { closeDialog, openDialog } from "../lib/dialog";
import { dicomFacts } from "../lib/dicom";
import { formatBytes } from "../lib/files";
import { REFUSAL_ADVICE, RESULT_OUTSIDE_RANGE, isRefused, refusalText, resultTone } from "../lib/results";
import type { SliceItem } from "../state";
import { ErrorNotice } from "./ErrorNotice";
import { ImageViewer } from "./ImageViewer";
import { ProbabilityBar } from "./ProbabilityBar";
import { CloseIcon, LevelCaveat } from "./ReadingBits";
import { ResultBadge } from "./ResultBadge";

interface Props {
  item: SliceItem;
  busy: boolean;
  onRemove(id: string): void;
  onToggleHeatmap(id: string): void;
  /** DICOM: (re)load the preview image in this window. */
  onWindow?(id: string, window: PreviewWindow): void;
  /** The level-shortcut caveat for a positive call (null: the model card does not list it). */
  caveat?: string | null;
}

function Placeholder({ kind, analysed }: { kind: SliceItem["kind"]; analysed: boolean }) {
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
      <small>
        {kind !== "dicom"
          ? "Preview not available"
          : analysed
            ? "Analysed: choose a window below to show the image"
            : "The server decodes DICOM: the image shows once it is analysed"}
      </small>
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

/** Which window a DICOM preview is in, in words. */
function windowCaption(window: PreviewWindow | undefined): string {
  const id = window ?? DEFAULT_PREVIEW_WINDOW;
  return PREVIEW_WINDOWS.find((w) => w.id === id)?.caption ?? id;
}

export function SliceCard({ item, busy, onRemove, onToggleHeatmap, onWindow, caveat }: Props) {
  const { result, error, status } = item;
  const [previewFailed, setPreviewFailed] = useState(false);
  const [report, setReport] = useState<{ busy: boolean; error: string | null }>({ busy: false, error: null });
  // The slice itself: the browser's own decoding, or for DICOM the server's windowed preview.
  const serverPreview = result?.preview_png_base64 ? `data:image/png;base64,${result.preview_png_base64}` : null;
  const localPreview = item.previewUrl && !previewFailed ? item.previewUrl : null;
  const baseSrc = localPreview ?? serverPreview;
  const facts = dicomFacts(result?.dicom);
  const heatmap = result?.heatmap_png_base64 ? `data:image/png;base64,${result.heatmap_png_base64}` : null;
  const tone = result ? resultTone(result.result) : null;
  const refused = result ? isRefused(result) : false;
  // No heatmap for a refused input: where the model "looked" in a photo means nothing.
  const showingHeatmap = item.showHeatmap && !!heatmap && !refused;
  const err = error ? describeError(error.status, error.detail) : null;
  const titleId = `${item.id}-title`;
  const dialog = useRef<HTMLDialogElement>(null);
  const shownSrc = showingHeatmap ? heatmap : baseSrc;
  const downloadReport = async () => {
    setReport({ busy: true, error: null });
    try {
      const op = (result?.operating_point as OperatingPoint | undefined) ?? "sensitive";
      saveBlob(await getReport([item.file], op), "fracture-triage-report.pdf");
      setReport({ busy: false, error: null });
    } catch (err) {
      setReport({
        busy: false,
        error: err instanceof ApiError ? describeError(err.status, err.detail).title : String(err),
      });
    }
  };
  const [large, setLarge] = useState(false);
  const openLarge = () => {
    if (!dialog.current) return;
    setLarge(true);
    openDialog(dialog.current);
  };
  const closeLarge = () => {
    if (!dialog.current) return;
    closeDialog(dialog.current);
    setLarge(false);
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
        ) : localPreview ? (
          <img
            src={localPreview}
            alt={`Preview of ${item.file.name}`}
            data-testid="preview-image"
            onError={() => setPreviewFailed(true)}
          />
        ) : serverPreview ? (
          <img src={serverPreview} alt={`Preview of ${item.file.name}`} data-testid="preview-image" />
        ) : (
          <Placeholder kind={previewFailed ? "other" : item.kind} analysed={status === "done"} />
        )}
        {(status === "analysing" || (item.showHeatmap && item.heatmapLoading) || item.previewLoading) && (
          <div className="thumb__busy" aria-hidden="true">
            <span className="spinner" />
          </div>
        )}
        {showingHeatmap && <Legend />}
        {!showingHeatmap && !localPreview && serverPreview && (
          <p className="thumb__caption" data-testid="preview-window">
            {windowCaption(item.previewWindow)}
          </p>
        )}
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
        onClose={() => setLarge(false)}
      >
        <div className="viewer__head">
          <h3 id={`${item.id}-viewer-title`}>
            {item.file.name}
            {showingHeatmap ? " · Grad-CAM heatmap" : ""}
          </h3>
          <button type="button" className="icon-btn icon-btn--light" onClick={closeLarge} aria-label="Close">
            <CloseIcon />
          </button>
        </div>
        {large && (
        <ImageViewer
          base={baseSrc ? { src: baseSrc, alt: `${item.file.name}, enlarged` } : null}
          overlay={heatmap && !refused ? { src: heatmap, alt: `Grad-CAM heatmap overlaid on ${item.file.name}` } : null}
          initialOpacity={showingHeatmap ? 0.7 : 0}
          label={`${item.file.name}: plus and minus zoom, drag to pan`}
          className="iv--dark"
          testId="card-viewer"
        />
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
            <CloseIcon />
          </button>
        </header>
        <p className="card__meta">
          {formatBytes(item.file.size)}
          {item.kind === "dicom" ? " · DICOM" : ""}
          {item.file.size === 0 && status === "done" ? " · file not kept (history)" : ""}
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
            {tone === "positive" && caveat && <LevelCaveat text={caveat} />}
            {refused && (
              <div className="refusal" data-testid="refusal">
                <p>{refusalText(result)}</p>
                {result.result !== RESULT_OUTSIDE_RANGE && (
                  <p className="refusal__advice" data-testid="refusal-advice">
                    {REFUSAL_ADVICE}
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
              {typeof result.latency_ms === "number" && (
                <div>
                  <dt>Time</dt>
                  <dd>{Math.round(result.latency_ms)} ms</dd>
                </div>
              )}
              {facts.map(([label, value]) => (
                <div key={label} data-testid="dicom-fact">
                  <dt>{label}</dt>
                  <dd>{value}</dd>
                </div>
              ))}
            </dl>
            {item.kind === "dicom" && onWindow && item.file.size > 0 && (
              <fieldset className="window-switch" disabled={item.previewLoading || busy}>
                <legend>DICOM window</legend>
                {result.preview_png_base64 ? (
                  PREVIEW_WINDOWS.map((w) => (
                    <label key={w.id} className="window-switch__option">
                      <input
                        type="radio"
                        name={`${item.id}-window`}
                        value={w.id}
                        checked={(item.previewWindow ?? DEFAULT_PREVIEW_WINDOW) === w.id}
                        onChange={() => onWindow(item.id, w.id)}
                      />
                      {w.label}
                    </label>
                  ))
                ) : (
                  <button
                    type="button"
                    className="btn btn--ghost btn--small"
                    onClick={() => onWindow(item.id, item.previewWindow ?? DEFAULT_PREVIEW_WINDOW)}
                  >
                    Show image
                  </button>
                )}
                {item.previewError && (
                  <span className="card__note card__note--error" role="alert">
                    {item.previewError}
                  </span>
                )}
              </fieldset>
            )}
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
                {showingHeatmap && (
                  <span className="card__note" data-testid="heatmap-legend">
                    Heatmap: where the model looked — not a fracture outline
                  </span>
                )}
              </div>
            )}
            {item.file.size > 0 && (
              <div className="take-away">
                <button
                  type="button"
                  className="btn btn--ghost btn--small"
                  onClick={() => void downloadReport()}
                  disabled={report.busy || busy}
                  aria-label={`Download a PDF report of ${item.file.name}`}
                  data-testid="slice-report"
                >
                  {report.busy ? "Preparing report…" : "Report (PDF)"}
                </button>
                {report.error && (
                  <span className="card__note card__note--error" role="alert">
                    Report not made: {report.error}
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

import { useCallback, useEffect, useMemo, useRef, useState, type KeyboardEvent, type MouseEvent } from "react";
import { ApiError, describeError, getReport, predict, predictStudy } from "../api/client";
import type { ModelCard, OperatingPoint, StudyResponse } from "../api/types";
import { csvBlob, saveBlob, studyCsv } from "../lib/csv";
import { formatBytes, formatPercent, previewKind } from "../lib/files";
import { historyId, studyContentId } from "../lib/history";
import { isRefused, levelCaveat, resultTone } from "../lib/results";
import { ownsKeys, readerKey } from "../lib/viewer";
import {
  SliceFiles,
  describeAggregation,
  describeStudyError,
  studyThresholds,
  summarise,
  toSource,
  type StudySource,
  MAX_FILES_PER_REQUEST,
} from "../lib/study";
import { OperatingPointSelector } from "./OperatingPointSelector";
import { ErrorNotice } from "./ErrorNotice";
import { ProbabilityBar } from "./ProbabilityBar";
import { ResultBadge } from "./ResultBadge";
import { StudyChart, describeSlice } from "./StudyChart";
import { StudyDropZone } from "./StudyDropZone";
import { StudySliceViewer, type HeatState, type PreviewState } from "./StudySliceViewer";
import { StudyTable } from "./StudyTable";
import { VertebraeChart } from "./VertebraeChart";
import { AnalyseOnDropSetting, LevelCaveat } from "./ReadingBits";

/** A study answer reopened from the history: no files, the answer only. */
export interface ReopenedStudy {
  historyId: string;
  label: string;
  study: StudyResponse;
}

interface Props {
  card: ModelCard | null;
  /** Analyse as soon as a series is added (the user's setting). */
  analyseOnDrop?: boolean;
  onAnalyseOnDrop?(value: boolean): void;
  /** Every study answer, for the history (with this selection's history id). */
  onResult?(entry: ReopenedStudy): void;
  /** An answer to show again (a new object each time the user reopens one). */
  reopened?: ReopenedStudy | null;
}

type Status = "idle" | "analysing" | "done" | "error";

function modelName(model: StudyResponse["model"] | undefined): string {
  if (!model) return "";
  const v = model.version;
  return `${model.name}${v ? (/^\d/.test(v) ? ` v${v}` : ` (${v})`) : ""}`;
}

/** Study mode: one CT series in, one verdict out, with every slice's score along the neck. */
export function StudyView({ card, analyseOnDrop = false, onAnalyseOnDrop, onResult, reopened }: Props) {
  const [source, setSource] = useState<StudySource | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [operatingPoint, setOperatingPoint] = useState<OperatingPoint>("sensitive");
  const opChosen = useRef(false);
  const [status, setStatus] = useState<Status>("idle");
  const [study, setStudy] = useState<StudyResponse | null>(null);
  const [error, setError] = useState<{ status: number; detail: string | null } | null>(null);
  const [selected, setSelected] = useState<number | null>(null);
  const [heatmaps, setHeatmaps] = useState<Record<string, HeatState>>({});
  const [preview, setPreview] = useState<PreviewState>({ status: "loading" });
  const [fileAtHand, setFileAtHand] = useState(false);
  const [announcement, setAnnouncement] = useState("");
  const [report, setReport] = useState<{ status: "idle" | "busy" } | { status: "error"; message: string }>({
    status: "idle",
  });
  /** The history entry of the current selection: the hash of its files' contents (the same
   * series again replaces its entry), a new random id for a selection that cannot be hashed. */
  const entryId = useRef<Promise<string>>(Promise.resolve(historyId()));
  const onResultRef = useRef(onResult);
  onResultRef.current = onResult;
  const stage = useRef<HTMLDivElement | null>(null);
  const runId = useRef(0);
  const sliceFiles = useMemo(() => (source ? new SliceFiles(source) : null), [source]);
  const thresholds = useMemo(() => studyThresholds(card), [card]);

  useEffect(() => {
    const preferred = card?.default_operating_point;
    if (!opChosen.current && (preferred === "sensitive" || preferred === "specific")) setOperatingPoint(preferred);
  }, [card]);

  const analyse = useCallback(async (src: StudySource, op: OperatingPoint) => {
    const id = ++runId.current;
    setStatus("analysing");
    setError(null);
    setAnnouncement(`Analysing the series: ${src.files.length} ${src.files.length === 1 ? "file" : "files"}…`);
    try {
      const answer = await predictStudy(src.files, op, true);
      if (id !== runId.current) return;
      setStudy(answer);
      setStatus("done");
      // Saved once the files' hash is known, without holding up the answer on screen.
      void entryId.current.then((entry) => {
        if (id === runId.current) onResultRef.current?.({ historyId: entry, label: src.label, study: answer });
      });
      // Heatmaps do not depend on the operating point: keep those already fetched.
      setHeatmaps((old) => {
        const next = { ...old };
        for (const top of answer.top_slices)
          if (top.heatmap_png_base64) next[top.name] = { status: "done", png: top.heatmap_png_base64 };
        return next;
      });
      setSelected((old) =>
        old != null && old < answer.slices.length ? old : (answer.top_slices[0]?.index ?? (answer.slices.length ? 0 : null)),
      );
      const s = summarise(answer);
      setAnnouncement(
        `Study result: ${answer.result}. ${
          isRefused(answer) ? "No fracture call was made." : `Study score ${formatPercent(answer.prediction)}, threshold ${formatPercent(answer.threshold)}.`
        } ${answer.slice_count} slices${s.refused ? `, ${s.refused} not a CT slice` : ""}${
          s.unreadable ? `, ${s.unreadable} files not read` : ""
        }.`,
      );
    } catch (err) {
      if (id !== runId.current) return;
      const status = err instanceof ApiError ? err.status : -1;
      const detail = err instanceof ApiError ? err.detail : err instanceof Error ? err.message : String(err);
      setStudy(null);
      setSelected(null);
      setError({ status, detail });
      setStatus("error");
      setAnnouncement(`The series could not be analysed: ${describeStudyError(status, detail).title}.`);
    }
  }, []);

  const onFiles = (picked: File[], folder?: string) => {
    const src = toSource(picked, folder);
    runId.current += 1; // an answer still on its way belongs to the old selection
    entryId.current = src ? studyContentId(src.files, historyId()) : Promise.resolve(historyId());
    setReport({ status: "idle" });
    setStudy(null);
    setError(null);
    setSelected(null);
    setHeatmaps({});
    setStatus("idle");
    setSource(src);
    setNotice(src ? null : "No slice files found in what was dropped.");
    const fits = src && (src.kind === "zip" || src.files.length <= MAX_FILES_PER_REQUEST);
    if (analyseOnDrop && src && fits) void analyse(src, operatingPoint);
  };

  // A study reopened from the history: its answer, without its files.
  useEffect(() => {
    if (!reopened) return;
    runId.current += 1;
    entryId.current = Promise.resolve(reopened.historyId);
    setSource(null);
    setNotice(null);
    setError(null);
    setReport({ status: "idle" });
    setStudy(reopened.study);
    setStatus("done");
    const heat: Record<string, HeatState> = {};
    for (const top of reopened.study.top_slices)
      if (top.heatmap_png_base64) heat[top.name] = { status: "done", png: top.heatmap_png_base64 };
    setHeatmaps(heat);
    setSelected(reopened.study.top_slices[0]?.index ?? (reopened.study.slices.length ? 0 : null));
    setAnnouncement(`Reopened from history: ${reopened.label}, ${reopened.study.result}.`);
  }, [reopened]);

  const clear = () => {
    runId.current += 1;
    entryId.current = Promise.resolve(historyId());
    setReport({ status: "idle" });
    setSource(null);
    setStudy(null);
    setError(null);
    setSelected(null);
    setHeatmaps({});
    setStatus("idle");
    setNotice(null);
  };

  const onOperatingPoint = (op: OperatingPoint) => {
    opChosen.current = true;
    setOperatingPoint(op);
    // The verdict is against the operating point's threshold: ask again.
    if (source && status === "done") void analyse(source, op);
  };

  const downloadReport = async () => {
    if (!source || !study) return;
    setReport({ status: "busy" });
    try {
      saveBlob(await getReport(source.files, study.operating_point as OperatingPoint), "fracture-triage-report.pdf");
      setReport({ status: "idle" });
      setAnnouncement("Report downloaded.");
    } catch (err) {
      const message =
        err instanceof ApiError ? describeStudyError(err.status, err.detail).title : err instanceof Error ? err.message : String(err);
      setReport({ status: "error", message });
    }
  };
  const downloadCsv = () => study && saveBlob(csvBlob(studyCsv(study)), "slice-scores.csv");

  const slice = study && selected != null ? study.slices[selected] : undefined;
  const topRank = useMemo(
    () => new Map((study?.top_slices ?? []).map((t, i) => [t.index, i + 1] as const)),
    [study],
  );

  // The selected slice's image: the user's own file (for a zip, the member unpacked here).
  useEffect(() => {
    if (!slice) return;
    if (!sliceFiles) return setPreview({ status: "none", kind: "missing" });
    let cancelled = false;
    let url: string | null = null;
    setPreview({ status: "loading" });
    setFileAtHand(false);
    void sliceFiles.get(slice.name).then((file) => {
      if (cancelled) return;
      setFileAtHand(!!file);
      if (!file) return setPreview({ status: "none", kind: "missing" });
      const kind = previewKind(file);
      if (kind !== "image" || typeof URL.createObjectURL !== "function") return setPreview({ status: "none", kind });
      url = URL.createObjectURL(file);
      setPreview({ status: "ready", url });
    });
    return () => {
      cancelled = true;
      if (url && typeof URL.revokeObjectURL === "function") URL.revokeObjectURL(url);
    };
  }, [slice, sliceFiles]);

  const requestHeatmap = useCallback(async () => {
    if (!slice || !sliceFiles) return;
    const name = slice.name;
    setHeatmaps((h) => ({ ...h, [name]: { status: "loading" } }));
    const file = await sliceFiles.get(name);
    const fail = (message: string) => setHeatmaps((h) => ({ ...h, [name]: { status: "error", message } }));
    if (!file) return fail("the file is not available in the browser");
    try {
      const r = await predict(file, operatingPoint, true);
      if (r.heatmap_png_base64)
        setHeatmaps((h) => ({
          ...h,
          [name]: { status: "done", png: r.heatmap_png_base64!, preview: r.preview_png_base64 ?? null },
        }));
      else fail("the server returned no heatmap for this slice");
    } catch (err) {
      fail(err instanceof ApiError ? describeError(err.status, err.detail).title.toLowerCase() : String(err));
    }
  }, [slice, sliceFiles, operatingPoint]);

  const select = (index: number) => study && setSelected(Math.max(0, Math.min(study.slices.length - 1, index)));
  const topIndices = useMemo(() => (study?.top_slices ?? []).map((t) => t.index), [study]);

  // The reader's keys, from anywhere in the chart and the viewer (form controls keep theirs).
  const onReaderKey = (event: KeyboardEvent<HTMLDivElement>) => {
    if (!study || selected == null || ownsKeys(event.target)) return;
    const action = readerKey(event);
    if (!action) return;
    const last = study.slices.length - 1;
    const next =
      action.type === "step" ? selected + action.delta
      : action.type === "first" ? 0
      : action.type === "last" ? last
      : topIndices[action.rank - 1];
    if (next == null) return;
    event.preventDefault();
    select(next);
  };
  // A click on the reader's background (a bar, the panel) hands the keys to the viewer.
  const onReaderClick = (event: MouseEvent<HTMLDivElement>) => {
    const control = (event.target as Element).closest("button, a, input, select, textarea, label, [tabindex]");
    if (control && event.currentTarget.contains(control)) return; // it keeps the focus it took
    stage.current?.focus({ preventScroll: true });
  };
  const busy = status === "analysing";
  const tooMany = !!source && source.kind !== "zip" && source.files.length > MAX_FILES_PER_REQUEST;
  const err = error ? describeStudyError(error.status, error.detail) : null;
  const summary = study ? summarise(study) : null;
  const refused = study ? isRefused(study) : false;
  const tone = study ? resultTone(study.result) : null;
  const caveat = levelCaveat(card);
  // A study bundle's C1–C7 (null for a slice bundle; absent in answers kept from before).
  const vertebrae = study?.vertebrae ?? null;

  return (
    <>
      <section className="panel upload" aria-labelledby="study-upload-title">
        <div className="panel__head">
          <h2 id="study-upload-title">Analyse a whole series</h2>
          <p className="hint">
            One CT series gets one answer: every slice is scored, ordered head to foot, and the most suspicious
            slices make the study score.
          </p>
        </div>
        <StudyDropZone onFiles={onFiles} disabled={busy} compact={!!source} />
        {notice && <p className="notice notice--warn">{notice}</p>}
        {tooMany && source && (
          <p className="notice notice--warn" role="alert" data-testid="study-too-many">
            This selection has {source.files.length.toLocaleString("en-US")} files; one upload takes at most{" "}
            {MAX_FILES_PER_REQUEST.toLocaleString("en-US")}. Zip the series folder and upload the .zip instead.
          </p>
        )}
        {source && (
          <div className="selection" data-testid="study-selection">
            <svg className="selection__icon" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
              {source.kind === "zip" ? (
                <path
                  d="M6 2h9l5 5v15H6V2Zm8 1.5V8h4.5M10 3v2h2V3m-2 4h2v2h-2m0 2h2v2h-2"
                  fill="none"
                  stroke="currentColor"
                  strokeWidth="1.5"
                />
              ) : (
                <path
                  d="M3 6.5A1.5 1.5 0 0 1 4.5 5H9l2 2h8.5A1.5 1.5 0 0 1 21 8.5v9a1.5 1.5 0 0 1-1.5 1.5h-15A1.5 1.5 0 0 1 3 17.5v-11Z"
                  fill="none"
                  stroke="currentColor"
                  strokeWidth="1.5"
                />
              )}
            </svg>
            <div className="selection__text">
              <strong>{source.label}</strong>
              <span className="muted">
                {source.kind === "zip"
                  ? `zip archive · ${formatBytes(source.bytes)}`
                  : `${source.files.length} ${source.files.length === 1 ? "file" : "files"} · ${formatBytes(source.bytes)}`}
              </span>
            </div>
            <button type="button" className="btn btn--ghost btn--small" onClick={clear} disabled={busy}>
              Remove
            </button>
          </div>
        )}
        <div className="controls">
          <OperatingPointSelector
            value={operatingPoint}
            onChange={onOperatingPoint}
            card={card}
            disabled={busy}
            name="study-operating-point"
            thresholds={thresholds}
            legend="Operating point (study threshold)"
          />
          {onAnalyseOnDrop && (
            <AnalyseOnDropSetting id="study-analyse-on-drop" value={analyseOnDrop} onChange={onAnalyseOnDrop} />
          )}
          <div className="actions">
            <button
              type="button"
              className="btn btn--primary"
              disabled={busy || !source || tooMany}
              onClick={() => source && void analyse(source, operatingPoint)}
              data-testid="study-analyse-button"
            >
              {busy ? (
                <>
                  <span className="spinner spinner--light" aria-hidden="true" /> Analysing series…
                </>
              ) : status === "done" ? (
                "Analyse again"
              ) : (
                "Analyse series"
              )}
            </button>
          </div>
        </div>
      </section>

      <p className="visually-hidden" aria-live="polite" data-testid="study-announcer">
        {announcement}
      </p>

      {status === "error" && err && error && (
        <ErrorNotice
          title={err.title}
          hint={err.hint}
          detail={error.detail}
          status={error.status}
          className="panel--error"
          testId="study-error"
        />
      )}

      {study && summary && tone && (
        <>
          <section
            className={`panel verdict verdict--${tone}`}
            aria-labelledby="verdict-title"
            aria-busy={busy}
            data-testid="study-verdict"
          >
            <div className="verdict__main">
              <h2 id="verdict-title" className="eyebrow">
                Study result
              </h2>
              <ResultBadge result={study.result} large testId="study-result" />
              {refused ? (
                <p className="refusal" data-testid="study-refusal">
                  None of the slices looks like an axial CT slice, so no fracture call was made.
                </p>
              ) : (
                <ProbabilityBar
                  probability={study.prediction}
                  threshold={study.threshold}
                  tone={tone}
                  operatingPoint={study.operating_point}
                  label="Study score"
                  testId="study-score"
                />
              )}
              {!refused && (
                <p className="hint">
                  {vertebrae
                    ? "Study score: the study head's probability of a fracture anywhere in C1–C7, read from every slice of the series in order,"
                    : `Study score: ${describeAggregation(study.aggregation)} (slices that are not CT slices left out),`}{" "}
                  compared with the study threshold of the <strong>{study.operating_point}</strong> operating point.
                </p>
              )}
              {tone === "positive" && caveat && <LevelCaveat text={caveat} />}
              <dl className="facts">
                <div>
                  <dt>Model</dt>
                  <dd data-testid="study-model">{modelName(study.model)}</dd>
                </div>
                <div>
                  <dt>Time</dt>
                  <dd>{(study.latency_ms / 1000).toFixed(1)} s</dd>
                </div>
              </dl>
              <div className="take-away" data-testid="study-take-away">
                <button
                  type="button"
                  className="btn btn--ghost btn--small"
                  onClick={() => void downloadReport()}
                  disabled={!source || busy || report.status === "busy"}
                  data-testid="study-report"
                >
                  {report.status === "busy" ? "Preparing report…" : "Download report (PDF)"}
                </button>
                <button type="button" className="btn btn--ghost btn--small" onClick={downloadCsv} data-testid="study-csv">
                  Slice scores (CSV)
                </button>
                {!source && <span className="hint">Reopened from history: add the files again for a report.</span>}
                {report.status === "error" && (
                  <span className="card__note card__note--error" role="alert">
                    Report not made: {report.message}
                  </span>
                )}
              </div>
            </div>
            <dl className="verdict__stats" data-testid="study-stats">
              <div>
                <dt>Slices scored</dt>
                <dd>{summary.scored}</dd>
              </div>
              <div>
                <dt>Above threshold</dt>
                <dd>{summary.above}</dd>
              </div>
              <div className={summary.refused ? "stat--neutral" : undefined}>
                <dt>Not a CT slice</dt>
                <dd>{summary.refused}</dd>
              </div>
              <div className={summary.unreadable ? "stat--error" : undefined}>
                <dt>Files not read</dt>
                <dd>{summary.unreadable}</dd>
              </div>
            </dl>
          </section>

          {study.errors.length > 0 && (
            <details className="panel notice-panel" data-testid="study-file-errors">
              <summary>
                {study.errors.length} {study.errors.length === 1 ? "file was" : "files were"} not read and left out
              </summary>
              <ul className="plain-list">
                {study.errors.map((e) => (
                  <li key={e.name}>
                    <strong>{e.name}</strong>: {e.error}
                  </li>
                ))}
              </ul>
            </details>
          )}

          {/* The reader: chart and viewer share the keys (arrows, Page Up/Down, Home/End, 1–9). */}
          <div className="reader" onKeyDown={onReaderKey} onClick={onReaderClick} data-testid="study-reader">
          {study.slices.length > 0 && (
            <section className="panel chart-panel" aria-labelledby="chart-title">
              <div className="panel__head panel__head--row">
                <h2 id="chart-title">Slice scores along the neck</h2>
                <ul className="chart-legend" aria-label="Legend">
                  <li>
                    <span className="key key--above" aria-hidden="true" /> At or above threshold
                  </li>
                  <li>
                    <span className="key key--below" aria-hidden="true" /> Below threshold
                  </li>
                  <li>
                    <span className="key key--ood" aria-hidden="true" /> Not a CT slice (not scored)
                  </li>
                  <li>
                    <span className="key key--top" aria-hidden="true">
                      1
                    </span>{" "}
                    Top slices (study score)
                  </li>
                </ul>
              </div>
              <div className={vertebrae ? "chart-row" : undefined}>
                <StudyChart
                  slices={study.slices}
                  threshold={study.threshold}
                  topRank={topRank}
                  selected={selected}
                  onSelect={select}
                  operatingPoint={study.operating_point}
                  positionUnit={study.position_unit}
                />
                {vertebrae && (
                  <figure className="vertebrae-panel" data-testid="study-vertebrae">
                    <figcaption className="vertebrae-panel__title">Per vertebra (study head)</figcaption>
                    <VertebraeChart vertebrae={vertebrae} />
                  </figure>
                )}
              </div>
              {study.slices.length > 1 && (
                <div className="scrubber">
                  <input
                    type="range"
                    min={0}
                    max={study.slices.length - 1}
                    step={1}
                    value={selected ?? 0}
                    onChange={(e) => select(Number(e.target.value))}
                    aria-label="Selected slice"
                    aria-valuetext={
                      slice && selected != null
                        ? describeSlice(slice, selected, study.slices.length, topRank.get(selected), study.position_unit)
                        : undefined
                    }
                    data-testid="slice-scrubber"
                  />
                </div>
              )}
            </section>
          )}

          {slice && selected != null && (
            <StudySliceViewer
              slice={slice}
              index={selected}
              count={study.slices.length}
              rank={topRank.get(selected)}
              threshold={study.threshold}
              preview={preview}
              heat={heatmaps[slice.name]}
              canRequestHeatmap={fileAtHand}
              onRequestHeatmap={() => void requestHeatmap()}
              onStep={(d) => select(selected + d)}
              positionUnit={study.position_unit}
              topIndices={topIndices}
              onSelect={select}
              stageRef={stage}
            />
          )}
          </div>

          {study.slices.length > 0 && (
            <section className="panel" aria-labelledby="slices-title">
              <div className="panel__head panel__head--row">
                <h2 id="slices-title">All slices</h2>
                <p className="hint">Head to foot · select a row to view the slice</p>
              </div>
              <StudyTable
                slices={study.slices}
                threshold={study.threshold}
                topRank={topRank}
                selected={selected}
                onSelect={select}
                positionUnit={study.position_unit}
              />
            </section>
          )}
        </>
      )}

      {!study && status !== "error" && (
        <section className="empty" aria-label="How study mode works">
          <ol className="steps">
            <li>
              <strong>Add one series.</strong> A folder of DICOM files, PNG/JPEG slices numbered in their names, or a
              .zip of them.
            </li>
            <li>
              <strong>Analyse.</strong> Every slice is scored; the most suspicious ones give the study score, compared
              with the study threshold.
            </li>
            <li>
              <strong>Review.</strong> Follow the scores along the neck and open any slice with its Grad-CAM heatmap.
            </li>
          </ol>
        </section>
      )}
    </>
  );
}

import { useCallback, useEffect, useMemo, useReducer, useRef, useState, type KeyboardEvent } from "react";
import { analyse } from "./analyse";
import { ApiError, describeError, getModelCard, getReadiness, predict, type ServerState } from "./api/client";
import type { ModelCard, OperatingPoint, PreviewWindow, SliceResult } from "./api/types";
import { BatchTable } from "./components/BatchTable";
import { DropZone } from "./components/DropZone";
import { HistoryPanel } from "./components/HistoryPanel";
import { ModelPanel } from "./components/ModelPanel";
import { MonitoringView } from "./components/MonitoringView";
import { OperatingPointSelector } from "./components/OperatingPointSelector";
import { AnalyseOnDropSetting } from "./components/ReadingBits";
import { ServerStatus } from "./components/ServerStatus";
import { SliceCard } from "./components/SliceCard";
import { StudyView, type ReopenedStudy } from "./components/StudyView";
import { WorklistView } from "./components/WorklistView";
import { csvBlob, saveBlob, slicesCsv } from "./lib/csv";
import { contentId, openHistory, restoreFile, storeFile, type HistoryEntry, type HistoryStore } from "./lib/history";
import { isRefused, levelCaveat, resultTone } from "./lib/results";
import { loadAnalyseOnDrop, saveAnalyseOnDrop } from "./lib/settings";
import { makeItem, reducer, restoredItem, type SliceItem } from "./state";

const isRetryable = (status: number) => status <= 0 || status === 429 || status >= 500;

export type Mode = "slices" | "study" | "worklist" | "monitoring";
const MODES: { id: Mode; label: string }[] = [
  { id: "slices", label: "Single slices" },
  { id: "study", label: "Study (whole series)" },
  { id: "worklist", label: "Worklist" },
  { id: "monitoring", label: "Monitoring" },
];

export interface AppProps {
  /** Milliseconds between /ready polls while the model is loading (tests pass a small value). */
  readyPollMs?: number;
  initialMode?: Mode;
  /** Analyse files as soon as they are added, unless the user chose otherwise (stored). */
  analyseOnDrop?: boolean;
  /** The browser history store; null for none. Default: IndexedDB when the browser has it. */
  history?: HistoryStore | null;
  /** Milliseconds between refreshes of the worklist while it is shown. */
  worklistPollMs?: number;
}

export default function App({
  readyPollMs = 3000,
  initialMode = "slices",
  analyseOnDrop: analyseOnDropDefault = true,
  history: historyStore,
  worklistPollMs = 10_000,
}: AppProps) {
  const [mode, setMode] = useState<Mode>(initialMode);
  const tabs = useRef<Record<Mode, HTMLButtonElement | null>>({
    slices: null,
    study: null,
    worklist: null,
    monitoring: null,
  });
  const [items, dispatch] = useReducer(reducer, []);
  const [operatingPoint, setOperatingPoint] = useState<OperatingPoint>("sensitive");
  const [busy, setBusy] = useState(false);
  const [server, setServer] = useState<ServerState | "checking">("checking");
  const [card, setCard] = useState<ModelCard | null>(null);
  const [cardError, setCardError] = useState<string | null>(null);
  const [announcement, setAnnouncement] = useState("");
  const opChosen = useRef(false);
  const itemsRef = useRef(items);
  itemsRef.current = items;
  const [analyseOnDrop, setAnalyseOnDropState] = useState(() => loadAnalyseOnDrop(analyseOnDropDefault));
  const setAnalyseOnDrop = (value: boolean) => {
    setAnalyseOnDropState(value);
    saveAnalyseOnDrop(value);
  };
  const history = useMemo(() => (historyStore !== undefined ? historyStore : openHistory()), [historyStore]);
  const [entries, setEntries] = useState<HistoryEntry[]>([]);
  const [reopened, setReopened] = useState<ReopenedStudy | null>(null);
  const saved = useRef(new Map<string, SliceResult>());
  // An item's history entry id (its content's hash) once saved.
  const savedIds = useRef(new Map<string, string>());
  const caveat = levelCaveat(card);

  // ---- history (this browser only) ----
  const refreshHistory = useCallback(() => {
    history
      ?.list()
      .then(setEntries)
      .catch(() => setEntries([]));
  }, [history]);
  useEffect(refreshHistory, [refreshHistory]);

  // Every finished slice result (a new object each time it changes: heatmap, preview, op).
  useEffect(() => {
    if (!history) return;
    for (const item of items) {
      if (item.status !== "done" || !item.result || saved.current.get(item.historyId) === item.result) continue;
      saved.current.set(item.historyId, item.result);
      const result = item.result;
      const group = item.batch;
      void Promise.all([
        contentId(item.file, item.historyId),
        item.file.size ? storeFile(item.file) : Promise.resolve(undefined),
      ])
        .then(([id, file]) => {
          savedIds.current.set(item.historyId, id);
          return history.put({ id, savedAt: Date.now(), kind: "slice", label: item.file.name, result, file, group });
        })
        .then(refreshHistory)
        .catch(() => {});
    }
  }, [items, history, refreshHistory]);

  const onStudyResult = useCallback(
    (entry: ReopenedStudy) => {
      history
        ?.put({ id: entry.historyId, savedAt: Date.now(), kind: "study", label: entry.label, study: entry.study })
        .then(refreshHistory)
        .catch(() => {});
    },
    [history, refreshHistory],
  );

  const openEntry = (entry: HistoryEntry) => {
    if (entry.kind === "study") {
      setReopened({ historyId: entry.id, label: entry.label, study: entry.study });
      setMode("study");
      return;
    }
    setMode("slices");
    let item = itemsRef.current.find((i) => i.historyId === entry.id || savedIds.current.get(i.historyId) === entry.id);
    if (!item) {
      const file = entry.file ? restoreFile(entry.file) : new File([], entry.label);
      item = restoredItem(file, entry.result, entry.id);
      saved.current.set(entry.id, entry.result);
      dispatch({ type: "addItems", items: [item] });
    }
    const id = item.id;
    setAnnouncement(`Reopened from history: ${entry.label}, ${entry.result.result}.`);
    requestAnimationFrame(() => document.getElementById(id)?.scrollIntoView?.({ block: "nearest" }));
  };

  const clearHistory = () => {
    history
      ?.clear()
      .then(() => setEntries([]))
      .catch(() => {});
    setAnnouncement("History cleared.");
  };

  // Readiness: poll while loading/unreachable, then less often.
  useEffect(() => {
    let cancelled = false;
    let timer: ReturnType<typeof setTimeout>;
    const check = async () => {
      const state = await getReadiness();
      if (cancelled) return;
      setServer(state);
      timer = setTimeout(check, state === "ready" ? readyPollMs * 10 : readyPollMs);
    };
    void check();
    return () => {
      cancelled = true;
      clearTimeout(timer);
    };
  }, [readyPollMs]);

  // The model card, fetched again once the server becomes ready if it failed before.
  useEffect(() => {
    if (card) return;
    let cancelled = false;
    getModelCard()
      .then((c) => !cancelled && (setCard(c), setCardError(null)))
      .catch((err: unknown) => !cancelled && setCardError(err instanceof Error ? err.message : String(err)));
    return () => {
      cancelled = true;
    };
  }, [server, card]);

  // Start at the model card's default operating point unless the user already chose one.
  useEffect(() => {
    const preferred = card?.default_operating_point;
    if (!opChosen.current && (preferred === "sensitive" || preferred === "specific")) setOperatingPoint(preferred);
  }, [card]);

  const runJobs = useCallback(async (jobs: { id: string; file: File }[], op: OperatingPoint) => {
    if (!jobs.length) return;
    setBusy(true);
    setAnnouncement(`Analysing ${jobs.length} ${jobs.length === 1 ? "slice" : "slices"}…`);
    dispatch({ type: "analysing", ids: jobs.map((j) => j.id) });
    let ok = 0;
    let failed = 0;
    let flagged = 0;
    let refused = 0;
    await analyse(jobs, op, {
      result: (id, result) => {
        ok += 1;
        if (resultTone(result.result) === "positive") flagged += 1;
        if (isRefused(result)) refused += 1;
        dispatch({ type: "result", id, result });
      },
      error: (id, status, detail) => {
        failed += 1;
        dispatch({ type: "error", id, status, detail });
      },
    });
    setBusy(false);
    setAnnouncement(
      `Analysis complete: ${ok} analysed, ${flagged} potentially fracture${
        refused ? `, ${refused} not a CT slice` : ""
      }${failed ? `, ${failed} failed` : ""}.`,
    );
  }, []);
  const run = useCallback(
    (ids: string[], op: OperatingPoint) =>
      runJobs(
        itemsRef.current.filter((i) => ids.includes(i.id)).map((i) => ({ id: i.id, file: i.file })),
        op,
      ),
    [runJobs],
  );

  // New files: analysed at once (the setting), or left for the Analyse button.
  const onFiles = (files: File[]) => {
    const added: SliceItem[] = files.map(makeItem);
    dispatch({ type: "addItems", items: added });
    if (analyseOnDrop && !busy) void runJobs(added.map((i) => ({ id: i.id, file: i.file })), operatingPoint);
  };

  // DICOM: the preview image in another window (bone / soft tissue), from /predict.
  const onWindow = useCallback(
    (id: string, window: PreviewWindow) => {
      const item = itemsRef.current.find((i) => i.id === id);
      if (!item) return;
      dispatch({ type: "previewLoading", id, window });
      const op = (item.result?.operating_point as OperatingPoint | undefined) ?? operatingPoint;
      predict(item.file, op, false, window)
        .then((r) => dispatch({ type: "preview", id, window, png: r.preview_png_base64 ?? null, dicom: r.dicom }))
        .catch((err: unknown) =>
          dispatch({
            type: "previewError",
            id,
            message: err instanceof ApiError ? describeError(err.status, err.detail).title : String(err),
          }),
        );
    },
    [operatingPoint],
  );

  const downloadCsv = () =>
    saveBlob(
      csvBlob(
        slicesCsv(
          itemsRef.current
            .filter((i) => i.status === "done" || i.status === "error")
            .map((i) => ({
              name: i.file.name,
              result: i.result?.result,
              prediction: i.result?.prediction,
              threshold: i.result?.threshold,
              operatingPoint: i.result?.operating_point,
              inDistribution: i.result?.in_distribution,
              error: i.error ? describeError(i.error.status, i.error.detail).title : null,
            })),
        ),
      ),
      "slice-results.csv",
    );

  const onToggleHeatmap = useCallback(
    (id: string) => {
      const item = itemsRef.current.find((i) => i.id === id);
      if (!item) return;
      dispatch({ type: "toggleHeatmap", id });
      if (item.showHeatmap || item.result?.heatmap_png_base64 || item.heatmapLoading) return;
      // Batch results come without a heatmap: ask for this one file with explain=true.
      dispatch({ type: "heatmapLoading", id });
      const op = (item.result?.operating_point as OperatingPoint | undefined) ?? operatingPoint;
      predict(item.file, op, true)
        .then((r) => dispatch({ type: "heatmap", id, png: r.heatmap_png_base64 ?? null }))
        .catch((err: unknown) =>
          dispatch({
            type: "heatmapError",
            id,
            message:
              err instanceof ApiError
                ? describeError(err.status, err.detail).title.toLowerCase()
                : String(err),
          }),
        );
    },
    [operatingPoint],
  );

  // New files, and files whose failure may be temporary (server not ready, unreachable, busy).
  const pending = items.filter(
    (i) => i.status === "idle" || (i.status === "error" && i.error && isRetryable(i.error.status)),
  );
  const analysed = items.filter((i) => i.status === "done");
  const toAnalyse = pending;

  const onOperatingPoint = (op: OperatingPoint) => {
    opChosen.current = true;
    setOperatingPoint(op);
    // Results are labelled against a threshold: re-run what was already analysed.
    const redo = itemsRef.current.filter((i) => i.status === "done").map((i) => i.id);
    if (redo.length && !busy) void run(redo, op);
  };

  // Tabs: arrow keys move between them (and select), Home/End jump to the ends.
  const onTabKey = (event: KeyboardEvent<HTMLDivElement>) => {
    const i = MODES.findIndex((m) => m.id === mode);
    const next =
      event.key === "ArrowRight" ? (i + 1) % MODES.length
      : event.key === "ArrowLeft" ? (i - 1 + MODES.length) % MODES.length
      : event.key === "Home" ? 0
      : event.key === "End" ? MODES.length - 1
      : -1;
    if (next < 0) return;
    event.preventDefault();
    const id = MODES[next]!.id;
    setMode(id);
    tabs.current[id]?.focus();
  };

  const showSummary = useMemo(() => items.length > 1 && items.some((i) => i.status !== "idle"), [items]);

  return (
    <div className="app">
      <a href="#main" className="skip-link">
        Skip to content
      </a>
      <header className="topbar">
        <div className="topbar__inner">
          <div className="brand">
            <svg className="brand__mark" viewBox="0 0 32 32" aria-hidden="true" focusable="false">
              <rect width="32" height="32" rx="7" fill="currentColor" />
              <g fill="#fff">
                <rect x="11" y="5" width="10" height="4.5" rx="2" />
                <rect x="11" y="11.5" width="10" height="4.5" rx="2" />
                <rect x="11" y="18" width="10" height="4.5" rx="2" />
                <rect x="11" y="24.5" width="10" height="3" rx="1.5" />
              </g>
            </svg>
            <div>
              <h1 className="brand__title">C-Spine CT Fracture Triage</h1>
              <p className="brand__sub">Decision support — not a diagnosis</p>
            </div>
          </div>
          <ServerStatus state={server} />
        </div>
      </header>

      <div className="layout">
        <main id="main" className="main" tabIndex={-1}>
          <div className="tabs" role="tablist" aria-label="Mode" onKeyDown={onTabKey}>
            {MODES.map((m) => (
              <button
                key={m.id}
                ref={(el) => {
                  tabs.current[m.id] = el;
                }}
                type="button"
                role="tab"
                id={`tab-${m.id}`}
                aria-selected={mode === m.id}
                aria-controls={`panel-${m.id}`}
                tabIndex={mode === m.id ? 0 : -1}
                className={`tab${mode === m.id ? " tab--selected" : ""}`}
                onClick={() => setMode(m.id)}
                data-testid={`tab-${m.id}`}
              >
                {m.label}
              </button>
            ))}
          </div>

          <div
            role="tabpanel"
            id="panel-slices"
            aria-labelledby="tab-slices"
            className="tabpanel"
            hidden={mode !== "slices"}
          >
            <section className="panel upload" aria-labelledby="upload-title">
              <h2 id="upload-title">Analyse CT slices</h2>
              <DropZone onFiles={onFiles} compact={items.length > 0} />
              <div className="controls">
                <OperatingPointSelector
                  value={operatingPoint}
                  onChange={onOperatingPoint}
                  card={card}
                  disabled={busy}
                />
                <AnalyseOnDropSetting id="analyse-on-drop" value={analyseOnDrop} onChange={setAnalyseOnDrop} />
                <div className="actions">
                  <button
                    type="button"
                    className="btn btn--primary"
                    disabled={busy || toAnalyse.length === 0}
                    onClick={() => void run(toAnalyse.map((i) => i.id), operatingPoint)}
                    data-testid="analyse-button"
                  >
                    {busy ? (
                      <>
                        <span className="spinner spinner--light" aria-hidden="true" /> Analysing…
                      </>
                    ) : toAnalyse.length > 1 ? (
                      `Analyse ${toAnalyse.length} slices`
                    ) : (
                      "Analyse"
                    )}
                  </button>
                  {analysed.length > 0 && (
                    <button type="button" className="btn btn--ghost" onClick={downloadCsv} data-testid="slices-csv">
                      Scores (CSV)
                    </button>
                  )}
                  {items.length > 0 && (
                    <button type="button" className="btn btn--ghost" disabled={busy} onClick={() => dispatch({ type: "clear" })}>
                      Clear all
                    </button>
                  )}
                </div>
              </div>
              {server !== "ready" && server !== "checking" && (
                <p className="notice notice--warn">
                  {server === "loading"
                    ? "The model is still loading; analysis will be available shortly."
                    : "The analysis server cannot be reached right now."}
                </p>
              )}
              {analysed.length > 0 && (
                <p className="hint">
                  Results use the <strong>{analysed[0]!.result?.operating_point ?? operatingPoint}</strong> operating
                  point. Changing it re-analyses every slice.
                </p>
              )}
            </section>

            <p className="visually-hidden" aria-live="polite" data-testid="announcer">
              {announcement}
            </p>

            {showSummary && <BatchTable items={items} />}

            {items.length > 0 ? (
              <section aria-label="Slices" className="cards">
                {items.map((item) => (
                  <SliceCard
                    key={item.id}
                    item={item}
                    busy={busy}
                    onRemove={(id) => dispatch({ type: "remove", id })}
                    onToggleHeatmap={onToggleHeatmap}
                    onWindow={onWindow}
                    caveat={caveat}
                  />
                ))}
              </section>
            ) : (
              <section className="empty" aria-label="How it works">
                <ol className="steps">
                  <li>
                    <strong>Add slices.</strong> Axial CT images of the cervical spine, as PNG, JPEG or DICOM.
                  </li>
                  <li>
                    <strong>Analyse.</strong> Each slice gets a fracture probability, compared with the threshold of the
                    chosen operating point.
                  </li>
                  <li>
                    <strong>Review.</strong> Open the Grad-CAM heatmap to see which regions drove the score. Every
                    result needs a clinician’s read.
                  </li>
                </ol>
              </section>
            )}
          </div>

          <div role="tabpanel" id="panel-study" aria-labelledby="tab-study" className="tabpanel" hidden={mode !== "study"}>
            <StudyView
              card={card}
              analyseOnDrop={analyseOnDrop}
              onAnalyseOnDrop={setAnalyseOnDrop}
              onResult={onStudyResult}
              reopened={reopened}
            />
          </div>

          {(["worklist", "monitoring"] as const).map((id) => (
            <div
              key={id}
              role="tabpanel"
              id={`panel-${id}`}
              aria-labelledby={`tab-${id}`}
              className="tabpanel"
              hidden={mode !== id}
            >
              {id === "worklist" ? (
                <WorklistView active={mode === id} pollMs={worklistPollMs} />
              ) : (
                <MonitoringView active={mode === id} />
              )}
            </div>
          ))}

          {entries.length > 0 && (mode === "slices" || mode === "study") && (
            <HistoryPanel entries={entries} onOpen={openEntry} onClear={clearHistory} />
          )}
        </main>

        <ModelPanel card={card} error={cardError} />
      </div>

      <footer className="footer">
        For clinical decision support only — not a diagnosis. Do not use as the sole basis for patient
        management.
      </footer>
    </div>
  );
}

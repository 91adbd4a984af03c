import { MAX_ENTRIES, type HistoryEntry } from "../lib/history";
import { ResultBadge } from "./ResultBadge";

interface Props {
  entries: HistoryEntry[];
  onOpen(entry: HistoryEntry): void;
  onClear(): void;
}

const time = (ms: number) =>
  new Date(ms).toLocaleString("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });

/** The last results, kept in this browser only: reopen one, or clear them all. */
export function HistoryPanel({ entries, onOpen, onClear }: Props) {
  return (
    <section className="panel history" aria-labelledby="history-title" data-testid="history">
      <div className="panel__head panel__head--row">
        <h2 id="history-title">Recent results</h2>
        <button type="button" className="btn btn--ghost btn--small" onClick={onClear} data-testid="history-clear">
          Clear history
        </button>
      </div>
      <p className="hint">
        Kept in this browser only (IndexedDB), never sent anywhere: up to the last {MAX_ENTRIES} results. A single
        slice is kept with its image; a study with its answer, not its files.
      </p>
      <ul className="history__list">
        {entries.map((entry) => {
          const result = entry.kind === "slice" ? entry.result.result : entry.study.result;
          return (
            <li key={entry.id} className="history__item" data-testid="history-entry">
              <ResultBadge result={result} testId="history-result" />
              <span className="history__label" title={entry.label}>
                {entry.label}
              </span>
              <span className="muted history__meta">
                {entry.kind === "study" ? `study · ${entry.study.slice_count} slices` : "slice"} · {time(entry.savedAt)}
              </span>
              <button
                type="button"
                className="btn btn--ghost btn--small"
                onClick={() => onOpen(entry)}
                aria-label={`Open ${entry.label} (${entry.kind})`}
              >
                Open
              </button>
            </li>
          );
        })}
      </ul>
    </section>
  );
}

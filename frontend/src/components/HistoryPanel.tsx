import { MAX_ENTRIES, historyRows, type HistoryEntry, type SliceEntry } from "../lib/history";
import { ResultBadge } from "./ResultBadge";

interface Props {
  entries: HistoryEntry[];
  onOpen(entry: HistoryEntry): void;
  onClear(): void;
}

const time = (ms: number) =>
  new Date(ms).toLocaleString("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });

function EntryRow({ entry, onOpen }: { entry: HistoryEntry; onOpen(entry: HistoryEntry): void }) {
  const result = entry.kind === "slice" ? entry.result.result : entry.study.result;
  return (
    <li className="history__item" data-testid="history-entry">
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
}

/** "34 slices: 3 Potentially Fracture, 30 Normal, 1 Not a CT slice" for a group's summary. */
function groupSummary(entries: SliceEntry[]): string {
  const counts = new Map<string, number>();
  for (const e of entries) counts.set(e.result.result, (counts.get(e.result.result) ?? 0) + 1);
  const parts = [...counts].map(([result, n]) => `${n} ${result}`);
  return `${entries.length} slices analysed together: ${parts.join(", ")}`;
}

/** The last results, kept in this browser only: reopen one, or clear them all. The same file
 * analysed again is one entry; slices analysed together are one group. */
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
        {historyRows(entries).map((row) =>
          row.kind === "entry" ? (
            <EntryRow key={row.entry.id} entry={row.entry} onOpen={onOpen} />
          ) : (
            <li key={row.id} className="history__group" data-testid="history-group">
              <details>
                <summary>
                  {groupSummary(row.entries)}
                  <span className="muted history__meta"> · {time(row.entries[0]!.savedAt)}</span>
                </summary>
                <ul className="history__list">
                  {row.entries.map((entry) => (
                    <EntryRow key={entry.id} entry={entry} onOpen={onOpen} />
                  ))}
                </ul>
              </details>
            </li>
          ),
        )}
      </ul>
    </section>
  );
}

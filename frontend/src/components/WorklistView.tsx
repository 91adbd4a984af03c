import { useCallback, useEffect, useRef, useState } from "react";
import { failureOf, getWorklist, type Failure } from "../api/client";
import { WORKLIST_STATUSES, type WorklistEntry, type WorklistPage, type WorklistStatus } from "../api/types";
import { formatPercent } from "../lib/files";
import { STATUS_LABELS, formatAge, formatClock, scannerLabel } from "../lib/worklist";
import { ApiErrorNotice } from "./ErrorNotice";
import { ResultBadge } from "./ResultBadge";
import { RowHeaderButton } from "./RowHeaderButton";
import { TableHead } from "./TableHead";
import { WorklistEntryPanel } from "./WorklistEntryPanel";

interface Props {
  /** The tab is shown: poll only then. */
  active: boolean;
  /** Milliseconds between refreshes of the list (tests pass a small value). */
  pollMs?: number;
  pageSize?: number;
}

/**
 * The triage worklist: every saved study, flagged first as the server orders it, refreshed
 * every `pollMs` and when the window regains focus; one entry opens below the list.
 */
export function WorklistView({ active, pollMs = 10_000, pageSize = 25 }: Props) {
  const [status, setStatus] = useState<WorklistStatus | "">("");
  const [offset, setOffset] = useState(0);
  const [page, setPage] = useState<WorklistPage | null>(null);
  const [error, setError] = useState<Failure | null>(null);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const [openId, setOpenId] = useState<number | null>(null);
  const [announcement, setAnnouncement] = useState("");
  const seenFlagged = useRef<Set<number> | null>(null);
  const latest = useRef(0);

  const refresh = useCallback(() => {
    const call = ++latest.current;
    getWorklist({ status: status || null, offset, limit: pageSize })
      .then((answer) => {
        if (call !== latest.current) return;
        setPage(answer);
        setError(null);
        setUpdatedAt(Date.now());
        // New flagged studies since the last refresh are announced (not on the first load).
        const flagged = answer.items.filter((e) => e.flagged).map((e) => e.id);
        if (seenFlagged.current) {
          const fresh = flagged.filter((id) => !seenFlagged.current!.has(id)).length;
          if (fresh) setAnnouncement(`${fresh} new flagged ${fresh === 1 ? "study" : "studies"} in the worklist.`);
        }
        seenFlagged.current = new Set([...(seenFlagged.current ?? []), ...flagged]);
      })
      .catch((err: unknown) => call === latest.current && setError(failureOf(err)));
  }, [status, offset, pageSize]);

  // While shown: at once, every pollMs, and whenever the window regains focus.
  useEffect(() => {
    if (!active) return;
    refresh();
    const timer = setInterval(refresh, pollMs);
    window.addEventListener("focus", refresh);
    return () => {
      clearInterval(timer);
      window.removeEventListener("focus", refresh);
    };
  }, [active, pollMs, refresh]);

  const onReviewed = useCallback(
    (entry: WorklistEntry) => {
      setPage((p) => p && { ...p, items: p.items.map((e) => (e.id === entry.id ? entry : e)) });
      refresh();
    },
    [refresh],
  );
  const onOpened = useCallback((entry: WorklistEntry) => {
    setPage((p) => p && { ...p, items: p.items.map((e) => (e.id === entry.id ? { ...e, status: entry.status } : e)) });
  }, []);

  const now = updatedAt ?? Date.now();
  const total = page?.total ?? 0;
  const last = Math.min(offset + pageSize, total);

  return (
    <>
      <section className="panel worklist" aria-labelledby="worklist-title" data-testid="worklist">
        <div className="panel__head panel__head--row">
          <h2 id="worklist-title">Worklist</h2>
          <div className="worklist__tools">
            <label className="worklist__filter">
              Status{" "}
              <select
                value={status}
                onChange={(e) => {
                  setStatus(e.target.value as WorklistStatus | "");
                  setOffset(0);
                }}
                data-testid="worklist-status-filter"
              >
                <option value="">All</option>
                {WORKLIST_STATUSES.map((s) => (
                  <option key={s} value={s}>
                    {STATUS_LABELS[s]}
                  </option>
                ))}
              </select>
            </label>
            <button type="button" className="btn btn--ghost btn--small" onClick={refresh}>
              Refresh
            </button>
          </div>
        </div>
        <p className="hint">
          Flagged studies (Potentially Fracture) first, then the longest waiting. The list refreshes every{" "}
          {Math.round(pollMs / 1000)} s.{" "}
          {updatedAt && (
            <span className="worklist__updated" data-testid="worklist-updated">
              Updated {formatClock(updatedAt)}
            </span>
          )}
        </p>
        <p className="visually-hidden" aria-live="polite" data-testid="worklist-announcer">
          {announcement}
        </p>
        {error && <ApiErrorNotice failure={error} testId="worklist-error" />}
        {page && page.items.length === 0 && (
          <p className="empty-note" data-testid="worklist-empty">
            {status
              ? `No ${STATUS_LABELS[status].toLowerCase()} study.`
              : "No study yet. Studies appear here once the PACS worker (or Study view's save) has analysed them."}
          </p>
        )}
        {page && page.items.length > 0 && (
          <div className="table-wrap">
            <table className="batch__table worklist__table" data-testid="worklist-table">
              <caption className="visually-hidden">
                Worklist studies, flagged first. Open a study to see its analysis and record a read.
              </caption>
              <TableHead
                columns={[
                  { label: "Study" },
                  { label: "Verdict" },
                  { label: "Score", num: true },
                  { label: "Waiting", num: true },
                  { label: "Status" },
                  { label: "Model" },
                  { label: "Scanner" },
                ]}
              />
              <tbody>
                {page.items.map((entry) => (
                  <tr
                    key={entry.id}
                    className={`study-row${openId === entry.id ? " study-row--selected" : ""}`}
                    aria-current={openId === entry.id ? "true" : undefined}
                    onClick={() => setOpenId(entry.id)}
                    data-testid="worklist-row"
                    data-id={entry.id}
                  >
                    <RowHeaderButton
                      onSelect={() => setOpenId(entry.id)}
                      aria-label={`Open study ${entry.id}, ${entry.verdict}`}
                    >
                      Study {entry.id}
                    </RowHeaderButton>
                    <td>
                      <ResultBadge result={entry.verdict} testId="worklist-verdict" />
                    </td>
                    <td className="num">
                      <span className={entry.flagged ? "score score--above" : "score"}>{formatPercent(entry.score)}</span>
                    </td>
                    <td className="num" title={entry.arrived_at}>
                      {formatAge(entry.arrived_at, now)}
                    </td>
                    <td>
                      <span className={`tag tag--${entry.status}`} data-testid="worklist-status">
                        {STATUS_LABELS[entry.status]}
                      </span>
                    </td>
                    <td className="worklist__wrap">
                      {entry.model.name} {entry.model.version}
                    </td>
                    <td className="worklist__wrap">{scannerLabel(entry)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {total > pageSize && (
          <nav className="worklist__pages" aria-label="Worklist pages">
            <button
              type="button"
              className="btn btn--ghost btn--small"
              disabled={offset === 0}
              onClick={() => setOffset(Math.max(0, offset - pageSize))}
            >
              Previous
            </button>
            <span data-testid="worklist-range">
              {offset + 1}–{last} of {total}
            </span>
            <button
              type="button"
              className="btn btn--ghost btn--small"
              disabled={last >= total}
              onClick={() => setOffset(offset + pageSize)}
            >
              Next
            </button>
          </nav>
        )}
      </section>
      {openId != null && (
        <WorklistEntryPanel
          key={openId}
          id={openId}
          active={active}
          onOpened={onOpened}
          onReviewed={onReviewed}
          onClose={() => setOpenId(null)}
        />
      )}
    </>
  );
}

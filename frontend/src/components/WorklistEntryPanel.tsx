import { useCallback, useEffect, useRef, useState } from "react";
import { failureOf, openWorklistEntry, reviewWorklistEntry, type Failure } from "../api/client";
import { VERTEBRA_LEVELS, type ReviewEntry, type VertebraLevel, type WorklistEntry } from "../api/types";
import { formatPercent } from "../lib/files";
import { formatPosition } from "../lib/study";
import { STATUS_LABELS, formatDateTime, readFracture, scannerLabel } from "../lib/worklist";
import { ApiErrorNotice, ErrorNotice } from "./ErrorNotice";
import { PacsTopSlices } from "./PacsTopSlices";
import { ResultBadge } from "./ResultBadge";
import { TableHead } from "./TableHead";
import { requestToken } from "./TokenPrompt";

interface Props {
  id: number;
  /** The Worklist tab is shown: the A / D shortcuts listen only then. */
  active: boolean;
  onOpened(entry: WorklistEntry): void;
  onReviewed(entry: WorklistEntry): void;
  onClose(): void;
}

const readLabel = (fracture: boolean) => (fracture ? "Fracture" : "No fracture");

/** Typing in a field, or a dialog on top: a letter is text, not a shortcut. */
function isTyping(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.closest("[role=dialog]")) return true;
  return target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
}

/** The entry's facts, label and value (the UIDs only when the series had them). */
function facts(entry: WorklistEntry): [string, string][] {
  const rows: [string, string | null][] = [
    ["Score", formatPercent(entry.score)],
    ["Threshold", formatPercent(entry.threshold)],
    ["Operating point", entry.operating_point],
    ["Model", `${entry.model.name} ${entry.model.version}`],
    ["Scanner", scannerLabel(entry)],
    ["Source", entry.source === "pacs" ? "PACS" : "Upload"],
    ["Arrived", formatDateTime(entry.arrived_at)],
    ["Analysed", formatDateTime(entry.analysed_at)],
    ["Opened", formatDateTime(entry.opened_at)],
    ["Study UID", entry.study_uid],
    ["Series UID", entry.series_uid],
  ];
  return rows.filter((r): r is [string, string] => r[1] != null);
}

function Read({ read, latest }: { read: ReviewEntry; latest: boolean }) {
  return (
    <li className="reads__item" data-testid="worklist-read">
      <span className={`dot-label dot-label--${read.fracture ? "positive" : "negative"}`}>{readLabel(read.fracture)}</span>
      {read.levels.length > 0 && <span> · {read.levels.join(", ")}</span>}
      {latest && <span className="tag tag--top reads__latest">Counts</span>}
      <span className="muted reads__meta">
        {" "}
        · {formatDateTime(read.reviewed_at)} · {read.reader ? `reader ${read.reader}` : "no reader token"}
      </span>
      {read.note && <p className="reads__note">{read.note}</p>}
    </li>
  );
}

/**
 * One worklist study (GET /worklist/{id}, which marks it opened): the product's call and its
 * top slices, every read so far, and the radiologist's read: Agree (A) or Disagree (D) with the
 * call, optional levels C1–C7 (with a fracture read) and a note.
 */
export function WorklistEntryPanel({ id, active, onOpened, onReviewed, onClose }: Props) {
  const [entry, setEntry] = useState<WorklistEntry | null>(null);
  const [loadError, setLoadError] = useState<Failure | null>(null);
  const [levels, setLevels] = useState<VertebraLevel[]>([]);
  const [note, setNote] = useState("");
  const [sending, setSending] = useState(false);
  const [reviewError, setReviewError] = useState<Failure | null>(null);
  const [announcement, setAnnouncement] = useState("");
  const heading = useRef<HTMLHeadingElement>(null);

  useEffect(() => {
    let cancelled = false;
    openWorklistEntry(id)
      .then((e) => {
        if (cancelled) return;
        setEntry(e);
        onOpened(e);
      })
      .catch((err: unknown) => !cancelled && setLoadError(failureOf(err)));
    return () => {
      cancelled = true;
    };
  }, [id, onOpened]);

  // Once the study is shown, the keyboard goes to it (its heading), in view.
  const loaded = entry != null;
  useEffect(() => {
    if (!loaded) return;
    heading.current?.focus();
    heading.current?.scrollIntoView?.({ block: "nearest" });
  }, [loaded]);

  const review = useCallback(
    (agree: boolean) => {
      if (!entry || sending) return;
      const fracture = readFracture(entry.flagged, agree);
      setSending(true);
      setReviewError(null);
      reviewWorklistEntry(entry.id, { fracture, levels: fracture ? levels : [], note: note.trim() || null })
        .then((e) => {
          setEntry(e);
          setNote("");
          setLevels([]);
          setAnnouncement(`Read recorded for study ${e.id}: ${readLabel(fracture).toLowerCase()}.`);
          onReviewed(e);
        })
        .catch((err: unknown) => setReviewError(failureOf(err)))
        .finally(() => setSending(false));
    },
    [entry, sending, levels, note, onReviewed],
  );

  // A agrees, D disagrees, anywhere on the page but in a field or a dialog.
  useEffect(() => {
    if (!active || !entry) return;
    const onKey = (event: KeyboardEvent) => {
      if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || isTyping(event.target)) return;
      const key = event.key.toLowerCase();
      if (key !== "a" && key !== "d") return;
      event.preventDefault();
      review(key === "a");
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [active, entry, review]);

  const toggleLevel = (level: VertebraLevel) =>
    setLevels((ls) => (ls.includes(level) ? ls.filter((l) => l !== level) : [...ls, level]));

  if (loadError) {
    return (
      <section className="panel" aria-label={`Study ${id}`}>
        <ApiErrorNotice failure={loadError} testId="worklist-entry-error" />
      </section>
    );
  }
  if (!entry) {
    return (
      <section className="panel" aria-label={`Study ${id}`} aria-busy="true">
        <p className="muted">
          <span className="spinner" aria-hidden="true" /> Opening study {id}…
        </p>
      </section>
    );
  }

  const forbidden = reviewError?.status === 403;

  return (
    <section className="panel entry" aria-labelledby="entry-title" data-testid="worklist-entry">
      <div className="panel__head panel__head--row">
        <h2 id="entry-title" ref={heading} tabIndex={-1}>
          Study {entry.id}
        </h2>
        <button type="button" className="btn btn--ghost btn--small" onClick={onClose}>
          Close
        </button>
      </div>
      <div className="entry__verdict">
        <ResultBadge result={entry.verdict} large testId="entry-verdict" />
        <span className={`tag tag--${entry.status}`} data-testid="entry-status">
          {STATUS_LABELS[entry.status]}
        </span>
      </div>
      <dl className="facts entry__facts">
        {facts(entry).map(([label, value]) => (
          <div key={label}>
            <dt>{label}</dt>
            <dd className={label.endsWith("UID") ? "mono" : undefined} data-testid={`entry-${label.toLowerCase().replace(/ /g, "-")}`}>
              {value}
            </dd>
          </div>
        ))}
      </dl>

      <h3>Top slices</h3>
      {entry.top_slices.length ? (
        <div className="table-wrap">
          <table className="batch__table" data-testid="entry-top-slices">
            <caption className="visually-hidden">The slices that drove the study's score, highest first.</caption>
            <TableHead
              columns={[
                { label: "Index", num: true },
                { label: "Slice" },
                { label: "Position", num: true },
                { label: "Score", num: true },
              ]}
            />
            <tbody>
              {entry.top_slices.map((s) => (
                <tr key={s.index}>
                  <td className="num">{s.index + 1}</td>
                  <th scope="row" title={s.name}>
                    {s.name}
                  </th>
                  <td className="num">{formatPosition(s.position)}</td>
                  <td className="num">{formatPercent(s.prediction)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : (
        <p className="muted">No slice was scored.</p>
      )}
      {entry.source === "pacs" && entry.top_slices.length > 0 ? (
        <PacsTopSlices entry={entry} />
      ) : (
        <p className="notice notice--info" data-testid="entry-pacs-note">
          The worklist keeps the analysis, not the images: read the slices in the PACS viewer.
        </p>
      )}

      <h3>Reads</h3>
      {entry.reviews.length ? (
        <ol className="reads" data-testid="entry-reads">
          {entry.reviews.map((r, i) => (
            <Read key={r.id} read={r} latest={i === entry.reviews.length - 1} />
          ))}
        </ol>
      ) : (
        <p className="muted" data-testid="entry-no-reads">
          No read recorded yet.
        </p>
      )}

      <form
        className="review"
        aria-labelledby="review-title"
        onSubmit={(e) => e.preventDefault()}
        data-testid="review-form"
      >
        <h3 id="review-title">Your read</h3>
        <fieldset className="review__levels">
          <legend>Fractured levels (optional; kept only with a fracture read)</legend>
          {VERTEBRA_LEVELS.map((level) => (
            <label key={level} className="review__level">
              <input type="checkbox" checked={levels.includes(level)} onChange={() => toggleLevel(level)} /> {level}
            </label>
          ))}
        </fieldset>
        <label htmlFor="review-note">Note (optional)</label>
        <textarea id="review-note" className="review__note" rows={2} value={note} onChange={(e) => setNote(e.target.value)} />
        <div className="actions">
          {[true, false].map((agree) => (
            <button
              key={String(agree)}
              type="button"
              className={agree ? "btn btn--primary" : "btn btn--ghost"}
              disabled={sending}
              aria-keyshortcuts={agree ? "A" : "D"}
              onClick={() => review(agree)}
              data-testid={agree ? "review-agree" : "review-disagree"}
            >
              {agree ? "Agree" : "Disagree"}: {readLabel(readFracture(entry.flagged, agree)).toLowerCase()}{" "}
              <kbd className="key-hint">{agree ? "A" : "D"}</kbd>
            </button>
          ))}
        </div>
        <p className="hint">
          The product called this study <strong>{entry.verdict}</strong>. A second read is added to the history; the
          latest counts for monitoring.
        </p>
      </form>
      {reviewError &&
        (forbidden ? (
          <div data-testid="review-forbidden">
            <ErrorNotice
              title="Reader token required"
              hint="Recording a read needs a token with the reader role. Enter a reader's token, then Agree or Disagree again."
              detail={reviewError.detail}
              status={403}
              testId="review-error"
            />
            <button type="button" className="btn btn--ghost btn--small" onClick={() => void requestToken(reviewError.detail)}>
              Enter a reader token
            </button>
          </div>
        ) : (
          <ApiErrorNotice failure={reviewError} testId="review-error" />
        ))}
      <p className="visually-hidden" aria-live="polite" data-testid="review-announcer">
        {announcement}
      </p>
    </section>
  );
}

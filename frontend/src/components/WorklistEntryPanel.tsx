import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, describeError, openWorklistEntry, reviewWorklistEntry } from "../api/client";
import { VERTEBRA_LEVELS, type ReviewEntry, type VertebraLevel, type WorklistEntry } from "../api/types";
import { formatPercent } from "../lib/files";
import { formatPosition } from "../lib/study";
import { STATUS_LABELS, formatDateTime, readFracture, scannerLabel } from "../lib/worklist";
import { ErrorNotice } from "./ErrorNotice";
import { ResultBadge } from "./ResultBadge";
import { requestToken } from "./TokenPrompt";

interface Props {
  id: number;
  /** The Worklist tab is shown: the A / D shortcuts listen only then. */
  active: boolean;
  onOpened(entry: WorklistEntry): void;
  onReviewed(entry: WorklistEntry): void;
  onClose(): void;
}

type Failure = { status: number; detail: string | null };
const failure = (err: unknown): Failure =>
  err instanceof ApiError ? { status: err.status, detail: err.detail } : { status: 0, detail: String(err) };

const readLabel = (fracture: boolean) => (fracture ? "Fracture" : "No fracture");

/** Typing in a field, or a dialog on top: a letter is text, not a shortcut. */
function isTyping(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.closest("[role=dialog]")) return true;
  return target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
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
      .catch((err: unknown) => !cancelled && setLoadError(failure(err)));
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
        .catch((err: unknown) => setReviewError(failure(err)))
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
        <ErrorNotice
          {...describeError(loadError.status, loadError.detail)}
          detail={loadError.detail}
          status={loadError.status}
          testId="worklist-entry-error"
        />
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

  const agreeMeans = readLabel(readFracture(entry.flagged, true)).toLowerCase();
  const disagreeMeans = readLabel(readFracture(entry.flagged, false)).toLowerCase();
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
        <div>
          <dt>Score</dt>
          <dd data-testid="entry-score">{formatPercent(entry.score)}</dd>
        </div>
        <div>
          <dt>Threshold</dt>
          <dd>{formatPercent(entry.threshold)}</dd>
        </div>
        <div>
          <dt>Operating point</dt>
          <dd>{entry.operating_point}</dd>
        </div>
        <div>
          <dt>Model</dt>
          <dd>
            {entry.model.name} {entry.model.version}
          </dd>
        </div>
        <div>
          <dt>Scanner</dt>
          <dd>{scannerLabel(entry)}</dd>
        </div>
        <div>
          <dt>Source</dt>
          <dd>{entry.source === "pacs" ? "PACS" : "Upload"}</dd>
        </div>
        <div>
          <dt>Arrived</dt>
          <dd>{formatDateTime(entry.arrived_at)}</dd>
        </div>
        <div>
          <dt>Analysed</dt>
          <dd>{formatDateTime(entry.analysed_at)}</dd>
        </div>
        <div>
          <dt>Opened</dt>
          <dd>{formatDateTime(entry.opened_at)}</dd>
        </div>
        {entry.study_uid && (
          <div>
            <dt>Study UID</dt>
            <dd className="mono">{entry.study_uid}</dd>
          </div>
        )}
        {entry.series_uid && (
          <div>
            <dt>Series UID</dt>
            <dd className="mono">{entry.series_uid}</dd>
          </div>
        )}
      </dl>

      <h3>Top slices</h3>
      {entry.top_slices.length ? (
        <div className="table-wrap">
          <table className="batch__table" data-testid="entry-top-slices">
            <caption className="visually-hidden">The slices that drove the study's score, highest first.</caption>
            <thead>
              <tr>
                <th scope="col" className="num">
                  Index
                </th>
                <th scope="col">Slice</th>
                <th scope="col" className="num">
                  Position
                </th>
                <th scope="col" className="num">
                  Score
                </th>
              </tr>
            </thead>
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
      <p className="notice notice--info" data-testid="entry-pacs-note">
        The worklist keeps the analysis, not the images: read the slices in the PACS viewer.
      </p>

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
          <button
            type="button"
            className="btn btn--primary"
            disabled={sending}
            aria-keyshortcuts="A"
            onClick={() => review(true)}
            data-testid="review-agree"
          >
            Agree: {agreeMeans} <kbd className="key-hint">A</kbd>
          </button>
          <button
            type="button"
            className="btn btn--ghost"
            disabled={sending}
            aria-keyshortcuts="D"
            onClick={() => review(false)}
            data-testid="review-disagree"
          >
            Disagree: {disagreeMeans} <kbd className="key-hint">D</kbd>
          </button>
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
          <ErrorNotice
            {...describeError(reviewError.status, reviewError.detail)}
            detail={reviewError.detail}
            status={reviewError.status}
            testId="review-error"
          />
        ))}
      <p className="visually-hidden" aria-live="polite" data-testid="review-announcer">
        {announcement}
      </p>
    </section>
  );
}

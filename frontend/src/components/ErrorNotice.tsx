import { describeError, type Failure } from "../api/client";
import { ToneIcon } from "./ResultBadge";

interface ErrorNoticeProps {
  /** What went wrong and what to do, in words. */
  title: string;
  hint: string;
  /** The server's own message and HTTP status (0 when the server was not reached). */
  detail?: string | null;
  status: number;
  className?: string;
  testId: string;
}

/** An API error explained in words, next to the thing that caused it. */
export function ErrorNotice({ title, hint, detail, status, className, testId }: ErrorNoticeProps) {
  return (
    <div className={className ? `error ${className}` : "error"} role="alert" data-testid={testId}>
      <ToneIcon tone="error" className="error__icon" />
      <div>
        <p className="error__title">{title}</p>
        <p className="error__hint">{hint}</p>
        {detail && detail !== hint && (
          <p className="error__detail">
            Server says: <q>{detail}</q>
            {status > 0 ? ` (HTTP ${status})` : ""}
          </p>
        )}
      </div>
    </div>
  );
}

/** A failed API call in the words of `describeError`, with the server's detail. */
export function ApiErrorNotice({ failure, testId }: { failure: Failure; testId: string }) {
  return (
    <ErrorNotice
      {...describeError(failure.status, failure.detail)}
      detail={failure.detail}
      status={failure.status}
      testId={testId}
    />
  );
}

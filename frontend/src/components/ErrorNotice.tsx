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
      <svg className="error__icon" viewBox="0 0 20 20" aria-hidden="true" focusable="false">
        <circle cx="10" cy="10" r="8.5" fill="none" stroke="currentColor" strokeWidth="1.5" />
        <path d="M9.1 5h1.8l-.3 6.5H9.4L9.1 5Zm.9 8.3a1.1 1.1 0 1 1 0 2.2 1.1 1.1 0 0 1 0-2.2Z" fill="currentColor" />
      </svg>
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

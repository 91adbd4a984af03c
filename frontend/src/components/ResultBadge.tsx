import { resultTone } from "../lib/results";

export function ResultBadge({ result }: { result: string }) {
  const tone = resultTone(result);
  return (
    <span className={`badge badge--${tone}`} data-testid="result-label">
      {tone === "positive" && (
        <svg className="badge__icon" viewBox="0 0 20 20" aria-hidden="true" focusable="false">
          <path d="M10 2 1 18h18L10 2Zm-1 6h2v5H9V8Zm0 6h2v2H9v-2Z" fill="currentColor" />
        </svg>
      )}
      {tone === "negative" && (
        <svg className="badge__icon" viewBox="0 0 20 20" aria-hidden="true" focusable="false">
          <path d="m8 13.6-3.6-3.6L3 11.4l5 5 9-9L15.6 6 8 13.6Z" fill="currentColor" />
        </svg>
      )}
      {result}
    </span>
  );
}

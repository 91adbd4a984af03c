import { resultTone } from "../lib/results";

interface Props {
  result: string;
  /** Bigger, for a study's verdict. */
  large?: boolean;
  testId?: string;
}

export function ResultBadge({ result, large, testId = "result-label" }: Props) {
  const tone = resultTone(result);
  return (
    <span className={`badge badge--${tone}${large ? " badge--large" : ""}`} data-testid={testId}>
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
      {tone === "neutral" && (
        <svg className="badge__icon" viewBox="0 0 20 20" aria-hidden="true" focusable="false">
          <circle cx="10" cy="10" r="7.25" fill="none" stroke="currentColor" strokeWidth="2" />
          <path d="m5 15 10-10" stroke="currentColor" strokeWidth="2" />
        </svg>
      )}
      {result}
    </span>
  );
}

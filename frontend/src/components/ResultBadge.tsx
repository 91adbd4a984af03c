import { RESULT_OUTSIDE_RANGE, resultTone, type Tone } from "../lib/results";

interface Props {
  result: string;
  /** Bigger, for a study's verdict. */
  large?: boolean;
  testId?: string;
}

/**
 * The shape of each kind of outcome, so that none is told apart by colour alone: a warning
 * triangle for a possible fracture, a tick for normal, a slashed circle for no call (not a CT
 * slice, unknown label), and a crossed square for an error (the file was not analysed).
 */
export function ToneIcon({
  tone,
  className = "badge__icon",
}: {
  tone: Tone | "error" | "outside";
  className?: string;
}) {
  return (
    <svg className={className} viewBox="0 0 20 20" aria-hidden="true" focusable="false" data-shape={tone}>
      {tone === "positive" && <path d="M10 2 1 18h18L10 2Zm-1 6h2v5H9V8Zm0 6h2v2H9v-2Z" fill="currentColor" />}
      {tone === "negative" && <path d="m8 13.6-3.6-3.6L3 11.4l5 5 9-9L15.6 6 8 13.6Z" fill="currentColor" />}
      {tone === "neutral" && (
        <>
          <circle cx="10" cy="10" r="7.25" fill="none" stroke="currentColor" strokeWidth="2" />
          <path d="m5 15 10-10" stroke="currentColor" strokeWidth="2" />
        </>
      )}
      {tone === "outside" && (
        <>
          {/* a CT slice (a disc) outside the frame of what the model reads */}
          <rect x="2" y="2" width="16" height="16" rx="2" fill="none" stroke="currentColor" strokeWidth="1.5" strokeDasharray="3 2" />
          <circle cx="10" cy="10" r="4.5" fill="currentColor" />
        </>
      )}
      {tone === "error" && (
        <>
          <rect x="3" y="3" width="14" height="14" rx="2" fill="none" stroke="currentColor" strokeWidth="2" />
          <path d="m7 7 6 6m0-6-6 6" stroke="currentColor" strokeWidth="2" />
        </>
      )}
    </svg>
  );
}

export function ResultBadge({ result, large, testId = "result-label" }: Props) {
  const tone = resultTone(result);
  // CT the model cannot judge: no call, like a refusal, but its own colour and shape.
  const outside = result === RESULT_OUTSIDE_RANGE;
  return (
    <span
      className={`badge badge--${tone}${outside ? " badge--outside" : ""}${large ? " badge--large" : ""}`}
      data-testid={testId}
    >
      <ToneIcon tone={outside ? "outside" : tone} />
      {result}
    </span>
  );
}

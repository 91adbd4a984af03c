import { formatPercent } from "../lib/files";
import type { Tone } from "../lib/results";

interface Props {
  probability: number;
  threshold: number;
  tone: Tone;
  operatingPoint?: string;
  /** What the bar measures ("Study score" for a series). */
  label?: string;
  testId?: string;
}

const clamp = (x: number) => Math.min(1, Math.max(0, x));

/** P(fracture) as a horizontal bar, with the decision threshold marked on it. */
export function ProbabilityBar({
  probability,
  threshold,
  tone,
  operatingPoint,
  label = "Fracture probability",
  testId = "probability",
}: Props) {
  const p = clamp(probability);
  const t = clamp(threshold);
  const above = p >= t;
  const valueText = `${label} ${formatPercent(p)}, ${above ? "at or above" : "below"} the ${
    operatingPoint ? `${operatingPoint} ` : ""
  }threshold of ${formatPercent(t)}`;
  return (
    <div className="prob">
      <div className="prob__head">
        <span className="prob__label">{label}</span>
        <span className="prob__value" data-testid={testId}>
          {formatPercent(p)}
        </span>
      </div>
      <div
        className={`prob__track prob__track--${tone}`}
        role="meter"
        aria-label={label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(p * 100)}
        aria-valuetext={valueText}
      >
        <div className="prob__fill" style={{ width: `${p * 100}%` }} />
        <div className="prob__threshold" style={{ left: `${t * 100}%` }} aria-hidden="true" />
      </div>
      <div className="prob__scale" aria-hidden="true">
        <span>0%</span>
        <span
          className={`prob__tick ${t > 0.8 ? "prob__tick--right" : t < 0.2 ? "prob__tick--left" : ""}`}
          style={{ left: `${t * 100}%` }}
        >
          threshold {formatPercent(t)}
        </span>
        <span>100%</span>
      </div>
    </div>
  );
}

import type { ModelCard, OperatingPoint } from "../api/types";
import { formatPercent } from "../lib/files";

interface Props {
  value: OperatingPoint;
  onChange(value: OperatingPoint): void;
  card: ModelCard | null;
  disabled?: boolean;
  /** Radio group name: one per selector on the page. */
  name?: string;
  /** Thresholds to show instead of the model card's slice thresholds (a study's). */
  thresholds?: Partial<Record<OperatingPoint, number>>;
  legend?: string;
}

const DESCRIPTIONS: Record<OperatingPoint, { title: string; text: string }> = {
  sensitive: { title: "Sensitive", text: "Fewer missed fractures, more false alarms. For triage." },
  specific: { title: "Specific", text: "Fewer false alarms, more missed fractures." },
};

export function OperatingPointSelector({
  value,
  onChange,
  card,
  disabled,
  name = "operating-point",
  thresholds,
  legend = "Operating point",
}: Props) {
  return (
    <fieldset className="op" disabled={disabled}>
      <legend className="op__legend">{legend}</legend>
      <div className="op__options">
        {(Object.keys(DESCRIPTIONS) as OperatingPoint[]).map((op) => {
          const threshold = thresholds ? thresholds[op] : card?.operating_points?.[op]?.threshold;
          return (
            <label key={op} className={`op__option${value === op ? " op__option--checked" : ""}`}>
              <input
                type="radio"
                name={name}
                value={op}
                checked={value === op}
                onChange={() => onChange(op)}
              />
              <span className="op__text">
                <span className="op__title">
                  {DESCRIPTIONS[op].title}
                  {typeof threshold === "number" && (
                    <span className="op__threshold"> · threshold {formatPercent(threshold)}</span>
                  )}
                </span>
                <span className="op__desc">{DESCRIPTIONS[op].text}</span>
              </span>
            </label>
          );
        })}
      </div>
    </fieldset>
  );
}

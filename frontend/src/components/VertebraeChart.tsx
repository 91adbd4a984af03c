import { useId } from "react";
import type { VertebraProbabilities } from "../api/types";
import { formatPercent } from "../lib/files";

/** C1 (atlas) to C7, head to foot: the order of the study head's outputs. */
export const VERTEBRAE = ["C1", "C2", "C3", "C4", "C5", "C6", "C7"] as const;

interface Props {
  vertebrae: VertebraProbabilities;
}

// Drawing units; the SVG scales to its container's width.
const W = 260;
const ROW = 32;
const M = { left: 34, right: 48, top: 12, bottom: 26 };
const PW = W - M.left - M.right;
const H = M.top + ROW * VERTEBRAE.length + M.bottom;

const x = (p: number) => M.left + PW * Math.min(1, Math.max(0, p));

/** The chart's text alternative: every vertebra's probability, head to foot. */
export function describeVertebrae(vertebrae: VertebraProbabilities): string {
  const parts = VERTEBRAE.map((name) => `${name} ${formatPercent(vertebrae[name])}`);
  const highest = VERTEBRAE.reduce((a, b) => (vertebrae[b] > vertebrae[a] ? b : a));
  return `Fracture probability per cervical vertebra, head to foot: ${parts.join(", ")}. Highest: ${highest}.`;
}

/**
 * A study bundle's per-vertebra fracture probabilities (the study head's C1–C7 outputs): one
 * horizontal bar per vertebra, C1 at the top as in the neck, shown beside the slice chart.
 * There is no per-vertebra threshold: the study verdict is on the study score.
 */
export function VertebraeChart({ vertebrae }: Props) {
  const uid = `vert${useId().replace(/[^a-zA-Z0-9_-]/g, "")}`;
  return (
    <svg
      className="chart vertebrae-chart"
      viewBox={`0 0 ${W} ${H}`}
      role="img"
      aria-labelledby={`${uid}-title`}
      aria-describedby={`${uid}-desc`}
      data-testid="vertebrae-chart"
    >
      <title id={`${uid}-title`}>Fracture probability of each vertebra, C1 to C7</title>
      <desc id={`${uid}-desc`}>{describeVertebrae(vertebrae)}</desc>
      <g className="chart__grid" aria-hidden="true">
        {[0, 0.5, 1].map((p) => (
          <g key={p}>
            <line x1={x(p)} x2={x(p)} y1={M.top} y2={H - M.bottom} />
            <text x={x(p)} y={H - M.bottom + 16} textAnchor="middle">
              {Math.round(p * 100)}%
            </text>
          </g>
        ))}
      </g>
      {VERTEBRAE.map((name, i) => {
        const p = vertebrae[name];
        const top = M.top + i * ROW;
        return (
          <g key={name} className="vertebra" data-testid="vertebra-bar" data-vertebra={name} data-probability={p}>
            <title>{`${name}: fracture probability ${formatPercent(p)}`}</title>
            <text className="vertebra__name" x={M.left - 8} y={top + ROW / 2} dy="0.32em" textAnchor="end">
              {name}
            </text>
            <rect className="vertebra__track" x={M.left} y={top + 7} width={PW} height={ROW - 14} rx={3} />
            <rect
              className="vertebra__bar"
              x={M.left}
              y={top + 7}
              width={Math.max(2, x(p) - M.left)}
              height={ROW - 14}
              rx={3}
            />
            <text className="vertebra__value" x={W - M.right + 6} y={top + ROW / 2} dy="0.32em">
              {formatPercent(p)}
            </text>
          </g>
        );
      })}
    </svg>
  );
}

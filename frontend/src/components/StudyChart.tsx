import { useId } from "react";
import type { StudySlice } from "../api/types";
import { formatPercent } from "../lib/files";
import { positionAxisLabel, sliceScale } from "../lib/chartScale";
import { formatPosition } from "../lib/study";

interface Props {
  slices: StudySlice[];
  threshold: number;
  /** Index in `slices` -> rank among the top slices (1 = most suspicious). */
  topRank: Map<number, number>;
  selected: number | null;
  onSelect(index: number): void;
  operatingPoint?: string;
  /** The API's `position_unit`: "mm" for DICOM geometry; absent: slice numbers. */
  positionUnit?: string | null;
}

// Drawing units; the SVG scales to its container's width.
const W = 800;
const H = 280;
const M = { left: 46, right: 14, top: 30, bottom: 46 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const y = (p: number) => M.top + PH * (1 - Math.min(1, Math.max(0, p)));

export function describeSlice(
  slice: StudySlice,
  index: number,
  count: number,
  rank?: number,
  unit?: string | null,
): string {
  const where = `Slice ${index + 1} of ${count}, position ${formatPosition(slice.position)}${unit === "mm" ? " mm" : ""}`;
  if (slice.in_distribution === false) return `${where}: ${slice.name}, not a CT slice (not scored)`;
  return `${where}: ${slice.name}, fracture probability ${formatPercent(slice.prediction)}${
    rank ? `, top slice ${rank}` : ""
  }`;
}

/**
 * Slice scores along the neck: one bar per slice head to foot, drawn to scale at its position
 * (mm, or slice number), so a gap in the series shows; the study threshold as a dashed line,
 * slices the CT gate refused hatched grey, the top slices numbered. Clicking a bar selects
 * that slice; the keyboard uses the reader's keys, the scrubber and the table.
 */
export function StudyChart({ slices, threshold, topRank, selected, onSelect, operatingPoint, positionUnit }: Props) {
  const uid = `chart${useId().replace(/[^a-zA-Z0-9_-]/g, "")}`;
  const n = slices.length;
  const scale = sliceScale(
    slices.map((s) => s.position),
    M.left,
    PW,
  );
  const barW = scale.barWidth;
  const x = (i: number) => scale.x[i] ?? M.left;
  const ty = y(threshold);
  const refused = slices.filter((s) => s.in_distribution === false).length;
  const above = slices.filter((s) => s.in_distribution !== false && s.prediction >= threshold).length;
  const best = [...topRank.entries()].sort((a, b) => a[1] - b[1])[0];
  // Rank markers above the top slices' bars; neighbours' markers are nudged apart sideways,
  // with a leader line down to their bar.
  const markers: { index: number; rank: number; cx: number; cy: number }[] = [];
  for (const [index, rank] of [...topRank.entries()].sort((a, b) => a[1] - b[1])) {
    const s = slices[index];
    if (!s) continue;
    let cx = x(index);
    const cy = Math.max(M.top - 14, y(s.prediction) - 14);
    while (markers.some((m) => Math.abs(m.cx - cx) < 19 && Math.abs(m.cy - cy) < 19)) cx += 19;
    markers.push({ index, rank, cx: Math.min(cx, W - 10), cy });
  }
  const first = slices[0];
  const last = slices[n - 1];
  const summary =
    `${n} slices from position ${first ? formatPosition(first.position) : "?"} (head) to ` +
    `${last ? formatPosition(last.position) : "?"} (foot)${positionUnit === "mm" ? " mm" : ""}, ${scale.toScale ? "drawn to scale" : "evenly spaced"}. ` +
    `${above} of them at or above the ${operatingPoint ? `${operatingPoint} ` : ""}study threshold of ${formatPercent(threshold)}` +
    `${refused ? `; ${refused} not a CT slice, not scored` : ""}.` +
    (best && slices[best[0]] ? ` Highest: ${slices[best[0]]!.name}, ${formatPercent(slices[best[0]]!.prediction)}.` : "");

  return (
    <svg
      className="chart"
      viewBox={`0 0 ${W} ${H}`}
      role="img"
      aria-labelledby={`${uid}-title`}
      aria-describedby={`${uid}-desc`}
      data-testid="study-chart"
    >
      <title id={`${uid}-title`}>Fracture probability of each slice, head to foot</title>
      <desc id={`${uid}-desc`}>{summary}</desc>
      <defs>
        <pattern id={`${uid}-hatch`} width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
          <rect width="6" height="6" className="chart__hatch-bg" />
          <line x1="0" y1="0" x2="0" y2="6" className="chart__hatch-line" />
        </pattern>
      </defs>

      {/* y axis: gridlines every 25% */}
      <g className="chart__grid" aria-hidden="true">
        {[0, 0.25, 0.5, 0.75, 1].map((p) => (
          <g key={p}>
            <line x1={M.left} x2={W - M.right} y1={y(p)} y2={y(p)} />
            <text x={M.left - 8} y={y(p)} dy="0.32em" textAnchor="end">
              {Math.round(p * 100)}%
            </text>
          </g>
        ))}
      </g>

      {/* one slot per slice: a hover/selection band, the bar, a rank marker for the top slices */}
      <g>
        {slices.map((s, i) => {
          const ood = s.in_distribution === false;
          const rank = topRank.get(i);
          // a 0% slice still shows; a refused slice is a short hatched stub: its score is not shown
          const h = ood ? 8 : Math.max(3, M.top + PH - y(s.prediction));
          const kind = ood ? "ood" : s.prediction >= threshold ? "above" : "below";
          return (
            <g
              key={`${i}-${s.name}`}
              className={`chart__slot chart__slot--${kind}${selected === i ? " chart__slot--selected" : ""}${
                rank ? " chart__slot--top" : ""
              }`}
              onClick={() => onSelect(i)}
              data-testid="chart-bar"
              data-index={i}
              data-kind={kind}
              data-top={rank ?? undefined}
            >
              <title>{describeSlice(s, i, n, rank, positionUnit)}</title>
              <rect
                className="chart__band"
                x={scale.bandLeft[i]}
                y={M.top}
                width={Math.max(0.5, scale.bandRight[i]! - scale.bandLeft[i]!)}
                height={PH}
              />
              <rect
                className="chart__bar"
                x={x(i) - barW / 2}
                y={M.top + PH - h}
                width={barW}
                height={h}
                rx={barW > 6 ? 2 : 0}
                fill={ood ? `url(#${uid}-hatch)` : undefined}
              />
            </g>
          );
        })}
      </g>

      {/* where the selected slice is, when the bars are too thin for their outline to show */}
      {selected != null && slices[selected] && barW < 6 && (
        <line
          className="chart__cursor"
          x1={x(selected)}
          x2={x(selected)}
          y1={M.top}
          y2={M.top + PH}
          aria-hidden="true"
        />
      )}

      <g aria-hidden="true">
        {markers.map((m) => (
          <g key={m.index} className="chart__rank" data-rank={m.rank}>
            {m.cx !== x(m.index) && (
              <line x1={m.cx} y1={m.cy + 9} x2={x(m.index)} y2={Math.max(m.cy + 9, y(slices[m.index]!.prediction))} />
            )}
            <g transform={`translate(${m.cx}, ${m.cy})`}>
              <circle r="9" />
              <text dy="0.35em" textAnchor="middle">
                {m.rank}
              </text>
            </g>
          </g>
        ))}
      </g>

      {/* the study threshold */}
      <g className="chart__threshold" aria-hidden="true">
        <line x1={M.left} x2={W - M.right} y1={ty} y2={ty} />
        <text x={W - M.right} y={ty - 6} textAnchor="end">
          study threshold {formatPercent(threshold)}
        </text>
      </g>

      {/* x axis: slice positions, head on the left */}
      <g className="chart__axis" aria-hidden="true">
        <line x1={M.left} x2={W - M.right} y1={M.top + PH} y2={M.top + PH} />
        {scale.ticks.map(({ value, x: tx0 }) => {
          // A label that would run off the drawing is anchored at its end instead of its middle.
          const label = formatPosition(value);
          const half = label.length * 3.6;
          const anchor = tx0 + half > W - 1 ? "end" : tx0 - half < 1 ? "start" : "middle";
          const tx = anchor === "end" ? W - 1 : anchor === "start" ? 1 : tx0;
          return (
            <g key={value} data-testid="chart-tick">
              <line x1={tx0} x2={tx0} y1={M.top + PH} y2={M.top + PH + 4} />
              <text x={tx} y={M.top + PH + 16} textAnchor={anchor}>
                {label}
              </text>
            </g>
          );
        })}
        <text className="chart__axis-title" x={M.left} y={H - 6} textAnchor="start">
          ← Head
        </text>
        <text className="chart__axis-title" x={M.left + PW / 2} y={H - 6} textAnchor="middle">
          {scale.toScale ? positionAxisLabel(positionUnit) : "Series order"}
        </text>
        <text className="chart__axis-title" x={W - M.right} y={H - 6} textAnchor="end">
          Foot →
        </text>
      </g>
    </svg>
  );
}

/**
 * The study chart's x axis, drawn to scale: each slice at its `position` (mm along the neck
 * when the API sends `position_unit: "mm"`, else the slice number), so a gap in the series
 * (slice 18, then slice 100) shows as a gap. Positions run head to foot in the order given;
 * they may grow or shrink (DICOM z falls towards the feet). When they are not strictly
 * monotonic (repeated or unordered), slices are spaced evenly instead.
 */
export interface SliceScale {
  /** Centre of each slice's bar. */
  x: number[];
  /** Left and right edge of each slice's click band (midpoints between neighbours). */
  bandLeft: number[];
  bandRight: number[];
  /** Bar width: a fraction of the narrowest gap between neighbours, 1 to 28 units. */
  barWidth: number;
  /** False when positions could not be used (spaced evenly by index). */
  toScale: boolean;
  /** Axis ticks: a round position value and where it lies. */
  ticks: { value: number; x: number }[];
}

function monotonic(values: number[]): boolean {
  if (values.length < 2) return true;
  const sign = Math.sign(values[1]! - values[0]!);
  if (sign === 0) return false;
  return values.every((v, i) => i === 0 || Math.sign(v - values[i - 1]!) === sign);
}

/** A round step (1, 2, 2.5, 5 × 10^k) giving about `wanted` intervals over `span`. */
export function niceStep(span: number, wanted = 6): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / wanted;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  return step;
}

/**
 * Lays out `positions` over [left, left + width]. Half a gap of margin is kept at each end so
 * the first and last bars are not cut.
 */
export function sliceScale(positions: number[], left: number, width: number): SliceScale {
  const n = positions.length;
  if (n === 0) return { x: [], bandLeft: [], bandRight: [], barWidth: 0, toScale: false, ticks: [] };
  const toScale = positions.every(Number.isFinite) && monotonic(positions);
  const values = toScale ? positions : positions.map((_, i) => i + 1);
  const first = values[0]!;
  const last = values[n - 1]!;
  const span = Math.abs(last - first);
  const gaps = values.slice(1).map((v, i) => Math.abs(v - values[i]!));
  const minGap = gaps.length ? Math.min(...gaps) : 1;
  // Margin at each end: half the narrowest gap, so end bars sit inside like the others.
  const unitsPerValue = n > 1 ? width / (span + minGap) : 0;
  const at = (v: number) =>
    n > 1 ? left + (Math.abs(v - first) + minGap / 2) * unitsPerValue : left + width / 2;
  const x = values.map(at);
  const bandLeft = x.map((c, i) => (i === 0 ? left : (x[i - 1]! + c) / 2));
  const bandRight = x.map((c, i) => (i === n - 1 ? left + width : (c + x[i + 1]!) / 2));
  const slot = n > 1 ? minGap * unitsPerValue : width;
  const barWidth = Math.max(1, Math.min(28, slot * (n > 200 ? 1 : 0.72)));

  const ticks: { value: number; x: number }[] = [];
  if (n === 1) {
    ticks.push({ value: first, x: x[0]! });
  } else {
    const lo = Math.min(first, last);
    const hi = Math.max(first, last);
    const step = niceStep(hi - lo);
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      const value = Number(v.toFixed(6));
      ticks.push({ value, x: at(value) });
    }
  }
  return { x, bandLeft, bandRight, barWidth, toScale, ticks };
}

/** The chart's x-axis title for the API's `position_unit`. */
export function positionAxisLabel(unit: string | null | undefined): string {
  // "index": the instance number or the number in the file name.
  return unit === "mm" ? "Position along the neck (mm)" : "Slice number";
}

import type { StudyResponse } from "../api/types";
import { isRefused } from "./results";

export type Cell = string | number | boolean | null | undefined;

/**
 * Text a spreadsheet could run as a formula: it starts with =, +, -, @ or their full-width
 * forms (＝ ＋ － ＠, which some spreadsheets read as the ASCII ones), or with any white space
 * (a leading space, tab or CR is trimmed by some before they look for a formula).
 */
const FORMULA_START = /^(?:[=+\-@\uFF1D\uFF0B\uFF0D\uFF20]|\s)/;

/**
 * Text that must be quoted: a separator of any locale (comma, semicolon, tab), a quote, a
 * line break, or white space at either end (which a reader might trim).
 */
const NEEDS_QUOTES = /[",;\t\r\n]|^\s|\s$/;

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, semicolon, tab, quote or line break
 * (so a spreadsheet that splits on ";" keeps it one cell). Text that a spreadsheet could run
 * as a formula (FORMULA_START) gets a leading apostrophe; numbers are written as numbers.
 */
export function csvField(value: Cell): string {
  if (value == null) return "";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "";
  if (typeof value === "boolean") return value ? "true" : "false";
  const text = FORMULA_START.test(value) ? `'${value}` : value;
  return NEEDS_QUOTES.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** Rows to CSV text (CRLF line ends, as spreadsheets expect), header first. */
export function toCsv(header: string[], rows: Cell[][]): string {
  return [header, ...rows].map((row) => row.map(csvField).join(",")).join("\r\n") + "\r\n";
}

/** Every slice of a study answer: order, name, position, score and how the study used it. */
export function studyCsv(study: StudyResponse): string {
  const rank = new Map(study.top_slices.map((t, i) => [t.index, i + 1] as const));
  const unit = study.position_unit === "mm" ? "mm" : "slice number";
  return toCsv(
    [
      "slice",
      "name",
      "position",
      "position_unit",
      "fracture_probability",
      "in_distribution",
      "at_or_above_threshold",
      "top_rank",
      "study_threshold",
      "operating_point",
    ],
    study.slices.map((s, i) => [
      i + 1,
      s.name,
      s.position,
      unit,
      s.in_distribution === false ? null : Number(s.prediction.toFixed(6)),
      s.in_distribution,
      s.in_distribution === false ? null : s.prediction >= study.threshold,
      rank.get(i) ?? null,
      Number(study.threshold.toFixed(6)),
      study.operating_point,
    ]),
  );
}

export interface SliceRow {
  name: string;
  result?: string;
  prediction?: number | null;
  threshold?: number | null;
  operatingPoint?: string | null;
  inDistribution?: boolean | null;
  error?: string | null;
}

/** The single-slice results: one row per file, the score left empty where it was not used. */
export function slicesCsv(rows: SliceRow[]): string {
  return toCsv(
    ["name", "result", "fracture_probability", "threshold", "operating_point", "in_distribution", "error"],
    rows.map((r) => {
      const refused = r.result ? isRefused({ result: r.result, in_distribution: r.inDistribution }) : false;
      return [
        r.name,
        r.result,
        refused || r.prediction == null ? null : Number(r.prediction.toFixed(6)),
        r.threshold == null ? null : Number(r.threshold.toFixed(6)),
        r.operatingPoint,
        r.inDistribution,
        r.error,
      ];
    }),
  );
}

/** Saves `blob` as a download named `name` (a local object URL: nothing is sent anywhere). */
export function saveBlob(blob: Blob, name: string): void {
  if (typeof URL.createObjectURL !== "function") return;
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.rel = "noopener";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function csvBlob(text: string): Blob {
  return new Blob([text], { type: "text/csv;charset=utf-8" });
}

import type { Proportion, WorklistEntry, WorklistStatus } from "../api/types";

/** How long a study has waited since it arrived: "just now", "12 min", "3 h 5 min", "2 d 4 h". */
export function formatAge(arrivedAt: string, now: number): string {
  const minutes = Math.floor((now - Date.parse(arrivedAt)) / 60_000);
  if (!Number.isFinite(minutes)) return "—";
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

/** A wall-clock time, hh:mm:ss (24 h). */
export const formatClock = (ms: number) =>
  new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

/** A date and time for the entry's facts: "5 Dec 2026, 03:12". */
export const formatDateTime = (iso: string | null | undefined) =>
  iso
    ? new Date(iso).toLocaleString("en-GB", {
        day: "numeric",
        month: "short",
        year: "numeric",
        hour: "2-digit",
        minute: "2-digit",
      })
    : "—";

/** "GE / Revolution", or "—" when the series named no scanner (PNG uploads). */
export function scannerLabel(entry: Pick<WorklistEntry, "manufacturer" | "manufacturer_model">): string {
  const parts = [entry.manufacturer, entry.manufacturer_model].filter((p): p is string => !!p);
  return parts.length ? parts.join(" / ") : "—";
}

export const STATUS_LABELS: Record<WorklistStatus, string> = {
  new: "New",
  opened: "Opened",
  reviewed: "Reviewed",
};

const pct = (x: number) => `${(x * 100).toFixed(1).replace(/\.0$/, "")} %`;

/** "87.5 %" and its Wilson 95 % interval "52.9–97.8 %"; null when no study counts towards it. */
export function proportionParts(p: Proportion): { estimate: string; interval: string | null } | null {
  if (p.estimate == null) return null;
  const interval = p.lower != null && p.upper != null ? `${pct(p.lower).replace(" %", "")}–${pct(p.upper)}` : null;
  return { estimate: pct(p.estimate), interval };
}

/** "87.5 % (52.9–97.8 %)", or "—". */
export function formatProportion(p: Proportion): string {
  const parts = proportionParts(p);
  if (!parts) return "—";
  return parts.interval ? `${parts.estimate} (${parts.interval})` : parts.estimate;
}

/** The read that agreeing (or disagreeing) with the product's call records. */
export const readFracture = (flagged: boolean, agree: boolean) => (agree ? flagged : !flagged);

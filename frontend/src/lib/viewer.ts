/** Pure helpers of the image viewer and the study reader: zoom steps, wheel, keys. */

export const MIN_ZOOM = 1;
export const MAX_ZOOM = 8;
const ZOOM_FACTOR = 1.25;

export function clampZoom(zoom: number): number {
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom));
}

/** One zoom step in (`+1`) or out (`-1`); back at 1 within rounding. */
export function zoomStep(zoom: number, direction: 1 | -1): number {
  const next = clampZoom(direction > 0 ? zoom * ZOOM_FACTOR : zoom / ZOOM_FACTOR);
  return Math.abs(next - 1) < 0.01 ? 1 : next;
}

/** Pan limits: the zoomed image may move until its edge reaches the stage's edge. */
export function clampPan(pan: { x: number; y: number }, zoom: number, width: number, height: number) {
  const maxX = (width * (zoom - 1)) / 2;
  const maxY = (height * (zoom - 1)) / 2;
  return { x: Math.min(maxX, Math.max(-maxX, pan.x)), y: Math.min(maxY, Math.max(-maxY, pan.y)) };
}

/** WheelEvent.deltaMode: pixels, lines, pages. */
const PIXELS_PER_MODE = [1, 40, 800];
/** Scrolled pixels per slice: one notch of a mouse wheel (about 100 px) is one slice. */
export const PIXELS_PER_SLICE = 100;

/**
 * Wheel to slice steps. Trackpads send many small deltas, a mouse wheel one of about 100 px per
 * notch: deltas add up in `pending` until they make whole slices (at most 10 per event). A
 * turn of direction starts afresh.
 */
export function wheelSteps(pending: number, deltaY: number, deltaMode = 0): { steps: number; pending: number } {
  const pixels = deltaY * (PIXELS_PER_MODE[deltaMode] ?? 1);
  const total = Math.sign(pixels) !== Math.sign(pending) ? pixels : pending + pixels;
  const steps = Math.max(-10, Math.min(10, Math.trunc(total / PIXELS_PER_SLICE))) || 0;
  return { steps, pending: steps ? 0 : total };
}

export type ReaderAction =
  | { type: "step"; delta: number }
  | { type: "first" }
  | { type: "last" }
  | { type: "top"; rank: number };

/**
 * What a key does in the study reader: arrows (and j/k) one slice, Page Up/Down ten, Home/End
 * the ends, digits 1–9 the top slice of that rank. Keys with Ctrl, Alt or Meta are left alone.
 */
export function readerKey(event: { key: string; ctrlKey?: boolean; altKey?: boolean; metaKey?: boolean }): ReaderAction | null {
  if (event.ctrlKey || event.altKey || event.metaKey) return null;
  switch (event.key) {
    case "ArrowDown":
    case "ArrowRight":
    case "j":
      return { type: "step", delta: 1 };
    case "ArrowUp":
    case "ArrowLeft":
    case "k":
      return { type: "step", delta: -1 };
    case "PageDown":
      return { type: "step", delta: 10 };
    case "PageUp":
      return { type: "step", delta: -10 };
    case "Home":
      return { type: "first" };
    case "End":
      return { type: "last" };
    default:
      return /^[1-9]$/.test(event.key) ? { type: "top", rank: Number(event.key) } : null;
  }
}

/** Keys typed into a form control belong to it (the scrubber, the opacity slider, a radio). */
export function ownsKeys(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

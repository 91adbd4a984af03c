import type { DicomInfo, OperatingPoint, PreviewWindow, SliceResult } from "./api/types";
import { nextId, previewKind, type PreviewKind } from "./lib/files";
import { historyId } from "./lib/history";

export type ItemStatus = "idle" | "analysing" | "done" | "error";

export interface SliceItem {
  id: string;
  file: File;
  kind: PreviewKind;
  previewUrl: string | null;
  status: ItemStatus;
  result?: SliceResult;
  error?: { status: number; detail: string | null };
  showHeatmap: boolean;
  /** Batch results carry no heatmap: it is fetched from /predict?explain=true on demand. */
  heatmapLoading?: boolean;
  heatmapError?: string | null;
  /** This file's entry in the browser's history (kept across reloads). */
  historyId: string;
  /** The analysis run this file was analysed in with others (its history entries group). */
  batch?: { id: string; size: number };
  /** DICOM: the window of the preview image, and its fetch. */
  previewWindow?: PreviewWindow;
  previewLoading?: boolean;
  previewError?: string | null;
}

export type Action =
  | { type: "add"; files: File[] }
  | { type: "addItems"; items: SliceItem[] }
  | { type: "remove"; id: string }
  | { type: "clear" }
  | { type: "analysing"; ids: string[] }
  | { type: "result"; id: string; result: SliceResult }
  | { type: "error"; id: string; status: number; detail: string | null }
  | { type: "toggleHeatmap"; id: string }
  | { type: "heatmapLoading"; id: string }
  | { type: "heatmap"; id: string; png: string | null }
  | { type: "heatmapError"; id: string; message: string }
  | { type: "previewLoading"; id: string; window: PreviewWindow }
  | {
      type: "preview";
      id: string;
      window: PreviewWindow;
      png: string | null;
      dicom?: DicomInfo | null;
    }
  | { type: "previewError"; id: string; message: string };

function createPreviewUrl(file: File, kind: PreviewKind): string | null {
  if (kind !== "image" || typeof URL.createObjectURL !== "function") return null;
  return URL.createObjectURL(file);
}

export function makeItem(file: File): SliceItem {
  const kind = previewKind(file);
  return {
    id: nextId(),
    file,
    kind,
    previewUrl: createPreviewUrl(file, kind),
    status: "idle",
    showHeatmap: false,
    historyId: historyId(),
  };
}

/** A result reopened from the history, with its file when the history kept it. */
export function restoredItem(file: File, result: SliceResult, id: string): SliceItem {
  return { ...makeItem(file), historyId: id, status: "done", result };
}

function revoke(item: SliceItem) {
  if (item.previewUrl && typeof URL.revokeObjectURL === "function") URL.revokeObjectURL(item.previewUrl);
}

function update(items: SliceItem[], id: string, patch: (item: SliceItem) => SliceItem): SliceItem[] {
  return items.map((item) => (item.id === id ? patch(item) : item));
}

export function reducer(items: SliceItem[], action: Action): SliceItem[] {
  switch (action.type) {
    case "add":
      return [...items, ...action.files.map(makeItem)];
    case "addItems":
      return [...items, ...action.items];
    case "remove": {
      const gone = items.find((i) => i.id === action.id);
      if (gone) revoke(gone);
      return items.filter((i) => i.id !== action.id);
    }
    case "clear":
      items.forEach(revoke);
      return [];
    case "analysing": {
      const ids = new Set(action.ids);
      const batch = action.ids.length > 1 ? { id: historyId(), size: action.ids.length } : undefined;
      return items.map((i) => (ids.has(i.id) ? { ...i, status: "analysing", error: undefined, batch } : i));
    }
    case "result":
      return update(items, action.id, (i) => ({
        ...i,
        status: "done",
        // A re-analysis without a heatmap (batch) keeps the one already fetched for this file.
        result: {
          ...action.result,
          heatmap_png_base64: action.result.heatmap_png_base64 ?? i.result?.heatmap_png_base64 ?? null,
          // likewise the DICOM preview and header facts (a batch answer has neither)
          preview_png_base64: action.result.preview_png_base64 ?? i.result?.preview_png_base64 ?? null,
          dicom: action.result.dicom ?? i.result?.dicom ?? null,
        },
        error: undefined,
      }));
    case "error":
      return update(items, action.id, (i) => ({
        ...i,
        status: "error",
        result: undefined,
        showHeatmap: false,
        error: { status: action.status, detail: action.detail },
      }));
    case "toggleHeatmap":
      return update(items, action.id, (i) => ({ ...i, showHeatmap: !i.showHeatmap, heatmapError: null }));
    case "heatmapLoading":
      return update(items, action.id, (i) => ({ ...i, heatmapLoading: true, heatmapError: null }));
    case "heatmap":
      return update(items, action.id, (i) =>
        i.result
          ? {
              ...i,
              heatmapLoading: false,
              result: { ...i.result, heatmap_png_base64: action.png },
              showHeatmap: i.showHeatmap && !!action.png,
              heatmapError: action.png ? null : "The server returned no heatmap for this image.",
            }
          : { ...i, heatmapLoading: false },
      );
    case "heatmapError":
      return update(items, action.id, (i) => ({
        ...i,
        heatmapLoading: false,
        showHeatmap: false,
        heatmapError: action.message,
      }));
    case "previewLoading":
      return update(items, action.id, (i) => ({ ...i, previewLoading: true, previewError: null, previewWindow: action.window }));
    case "preview":
      return update(items, action.id, (i) => ({
        ...i,
        previewLoading: false,
        previewWindow: action.window,
        previewError: action.png ? null : "The server sent no image for this DICOM file.",
        result: i.result
          ? {
              ...i.result,
              preview_png_base64: action.png ?? i.result.preview_png_base64 ?? null,
              dicom: action.dicom ?? i.result.dicom ?? null,
            }
          : i.result,
      }));
    case "previewError":
      return update(items, action.id, (i) => ({ ...i, previewLoading: false, previewError: action.message }));
  }
}

export interface Settings {
  operatingPoint: OperatingPoint;
}

import { INPUT_FORMATS } from "../generated/formats";

/** The file input's `accept`: generated from the server's table of input formats. */
export { ACCEPT } from "../generated/formats";

export type PreviewKind = "image" | "dicom" | "other";

/** Formats a browser can draw in an <img>. DICOM (and TIFF) get a placeholder instead. */
const BROWSER_IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"]);
const BROWSER_IMAGE_EXT = /\.(png|jpe?g|gif|webp|bmp)$/i;
const DICOM = INPUT_FORMATS.find((format) => format.name === "DICOM");
const DICOM_TYPES = new Set(DICOM?.mimeTypes ?? []);
const DICOM_EXTENSIONS = new Set(DICOM?.extensions ?? []);

function extension(name: string): string {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot).toLowerCase();
}

export function previewKind(file: File): PreviewKind {
  if (DICOM_TYPES.has(file.type) || DICOM_EXTENSIONS.has(extension(file.name))) return "dicom";
  // Files without an extension or type are most often DICOM exported from a PACS.
  if (!file.type && !/\.[a-z0-9]{1,5}$/i.test(file.name)) return "dicom";
  if (BROWSER_IMAGE_TYPES.has(file.type) || (!file.type && BROWSER_IMAGE_EXT.test(file.name))) return "image";
  return "other";
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export function formatPercent(p: number): string {
  const pct = p * 100;
  if (pct > 0 && pct < 1) return "<1%";
  if (pct < 100 && pct > 99) return ">99%";
  return `${Math.round(pct)}%`;
}

let counter = 0;
export function nextId(): string {
  counter += 1;
  return `slice-${counter}`;
}

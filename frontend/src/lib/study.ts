import { describeError, type ErrorDescription } from "../api/client";
import type { ModelCard, OperatingPoint, StudyResponse } from "../api/types";
import { extractZipEntry, findZipEntry, isZipFile, readZipEntries, type ZipEntry } from "./zip";

export type StudySourceKind = "folder" | "zip" | "files";

export interface StudySource {
  kind: StudySourceKind;
  /** Folder name, zip name, or "3 files". */
  label: string;
  files: File[];
  bytes: number;
}

/** Files a folder holds besides its slices (the server skips them in a zip too). */
const SKIPPED = new Set(["dicomdir", "thumbs.db", "desktop.ini"]);

export function isJunk(file: File): boolean {
  const path = (file as File & { webkitRelativePath?: string }).webkitRelativePath || file.name;
  const parts = path.split("/").filter(Boolean);
  if (parts.some((p) => p.startsWith(".") || p === "__MACOSX")) return true;
  return SKIPPED.has(file.name.toLowerCase());
}

/** What the user picked or dropped, as one study upload. */
export function toSource(picked: File[], folderName?: string): StudySource | null {
  const files = picked.filter((f) => !isJunk(f));
  if (!files.length) return null;
  const bytes = files.reduce((n, f) => n + f.size, 0);
  const relative = (files[0] as File & { webkitRelativePath?: string }).webkitRelativePath;
  const folder = folderName ?? (relative && relative.includes("/") ? relative.split("/")[0] : undefined);
  if (files.length === 1 && isZipFile(files[0]!)) return { kind: "zip", label: files[0]!.name, files, bytes };
  if (folder) return { kind: "folder", label: folder, files, bytes };
  return { kind: "files", label: `${files.length} ${files.length === 1 ? "file" : "files"}`, files, bytes };
}

// ---- dropped folders: DataTransferItem.webkitGetAsEntry() ----
interface FsEntry {
  isFile: boolean;
  isDirectory: boolean;
  name: string;
  file?(ok: (f: File) => void, fail: (e: unknown) => void): void;
  createReader?(): { readEntries(ok: (entries: FsEntry[]) => void, fail: (e: unknown) => void): void };
}

async function walk(entry: FsEntry, out: File[]): Promise<void> {
  if (entry.isFile && entry.file) {
    out.push(await new Promise<File>((ok, fail) => entry.file!(ok, fail)));
  } else if (entry.isDirectory && entry.createReader) {
    const reader = entry.createReader();
    // readEntries answers in batches (100 in Chromium) until it returns an empty one.
    for (;;) {
      const batch = await new Promise<FsEntry[]>((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) await walk(child, out);
    }
  }
}

/** Files of a drop, folders walked recursively; the folder's name when one folder was dropped. */
export async function filesFromDrop(data: DataTransfer): Promise<{ files: File[]; folder?: string }> {
  const items = Array.from(data.items ?? []).filter((i) => i.kind === "file");
  const entries = items
    .map((i) => (typeof i.webkitGetAsEntry === "function" ? (i.webkitGetAsEntry() as FsEntry | null) : null))
    .filter((e): e is FsEntry => !!e);
  if (entries.length && entries.some((e) => e.isDirectory)) {
    const files: File[] = [];
    for (const entry of entries) await walk(entry, files);
    const dirs = entries.filter((e) => e.isDirectory);
    return { files, folder: dirs.length === 1 && entries.length === 1 ? dirs[0]!.name : undefined };
  }
  return { files: Array.from(data.files ?? []) };
}

// ---- from a slice name in the answer back to the user's file ----
/**
 * Finds the local file behind a slice of the study answer: by name, or for a zip by
 * unpacking that one member here. The server renames repeated names `N/name` (N = upload
 * order, 1-based); zip members with a repeated base name keep their path.
 */
export class SliceFiles {
  private zipEntries: Promise<ZipEntry[] | null> | null = null;
  private cache = new Map<string, Promise<File | null>>();

  constructor(private readonly source: StudySource) {}

  get(name: string): Promise<File | null> {
    let hit = this.cache.get(name);
    if (!hit) {
      hit = this.lookup(name).catch(() => null);
      this.cache.set(name, hit);
    }
    return hit;
  }

  private async lookup(name: string): Promise<File | null> {
    const { files, kind } = this.source;
    if (kind === "zip") {
      this.zipEntries ??= readZipEntries(files[0]!);
      const entries = await this.zipEntries;
      const entry = entries && findZipEntry(entries, name);
      return entry ? extractZipEntry(files[0]!, entry) : null;
    }
    const numbered = /^(\d+)\/(.*)$/.exec(name);
    if (numbered) {
      const file = files[Number(numbered[1]) - 1];
      if (file && file.name === numbered[2]) return file;
    }
    return files.find((f) => f.name === name) ?? null;
  }
}

/**
 * Most files one multipart request may carry (FastAPI's form parser refuses more with a 400).
 * A bigger series goes as one .zip, which has no such limit.
 */
export const MAX_FILES_PER_REQUEST = 1000;

// ---- words ----
/** Plain-words explanation of a failed /predict/study call. */
export function describeStudyError(status: number, detail: string | null = null): ErrorDescription {
  if (status === 400 && detail && /too many files/i.test(detail)) {
    return {
      title: "Too many files",
      hint: `One upload takes at most ${MAX_FILES_PER_REQUEST.toLocaleString("en-US")} files. Zip the series folder and upload the .zip instead.`,
    };
  }
  switch (status) {
    case 400:
      return {
        title: "Not one series",
        hint:
          "Upload the slices of one CT series: DICOM files from a single series, or PNG/JPEG slices " +
          "with the slice number in each file name, e.g. “neck (12).png”.",
      };
    case 413:
      return {
        title: "Study too large",
        hint: "The series has too many slices or is over the server's upload limit. Upload one series at a time.",
      };
    case 422:
      return { title: "No files sent", hint: "Choose a folder, a .zip or the slice files of one series." };
    default:
      return describeError(status, detail);
  }
}

/** "top2_mean" -> words. */
export function describeAggregation(aggregation: string): string {
  const top = /^top(\d+)_mean$/.exec(aggregation);
  if (top) {
    const k = Number(top[1]);
    return k === 1
      ? "the highest slice probability"
      : `the mean of the ${k} highest slice probabilities`;
  }
  if (aggregation === "max") return "the highest slice probability";
  if (aggregation === "mean") return "the mean slice probability";
  return aggregation.replace(/_/g, " ");
}

/** The study thresholds from the model card's `study.operating_points`, when present. */
export function studyThresholds(card: ModelCard | null): Partial<Record<OperatingPoint, number>> {
  const study = (card as { study?: unknown } | null)?.study;
  const points = study && typeof study === "object" ? (study as { operating_points?: unknown }).operating_points : null;
  const out: Partial<Record<OperatingPoint, number>> = {};
  if (points && typeof points === "object") {
    for (const op of ["sensitive", "specific"] as OperatingPoint[]) {
      const t = (points as Record<string, { threshold?: unknown } | undefined>)[op]?.threshold;
      if (typeof t === "number") out[op] = t;
    }
  }
  return out;
}

export function formatPosition(position: number): string {
  return Number.isInteger(position) ? String(position) : position.toFixed(1);
}

export interface StudySummary {
  scored: number;
  refused: number;
  above: number;
  unreadable: number;
}

export function summarise(study: StudyResponse): StudySummary {
  const refused = study.slices.filter((s) => s.in_distribution === false).length;
  return {
    scored: study.slices.length - refused,
    refused,
    above: study.slices.filter((s) => s.in_distribution !== false && s.prediction >= study.threshold).length,
    unreadable: study.errors.length,
  };
}

/**
 * Session history, in this browser only (IndexedDB): the last results, so they can be reopened
 * after a reload. Nothing here is ever sent to the server. A single slice is kept with its file
 * (so it can be shown, explained and reported again); a study keeps its answer only (the top
 * slices' heatmaps included), not its files.
 */
import type { SliceResult, StudyResponse } from "../api/types";

export const DB_NAME = "cspine-triage";
const STORE = "results";
const VERSION = 1;
/** Entries kept; older ones are dropped when a new one is saved. */
export const MAX_ENTRIES = 20;
/** Slice files larger than this are not kept (the result still is). */
export const MAX_FILE_BYTES = 8 * 1024 * 1024;

export interface StoredFile {
  name: string;
  type: string;
  bytes: ArrayBuffer;
}

export interface SliceEntry {
  /** `sha256-<hex>` of the file's bytes (one entry per file content), else a random id. */
  id: string;
  savedAt: number;
  kind: "slice";
  label: string;
  result: SliceResult;
  file?: StoredFile;
  /** The files analysed together with it: shown as one group in the history. */
  group?: { id: string; size: number };
}
export interface StudyEntry {
  id: string;
  savedAt: number;
  kind: "study";
  label: string;
  study: StudyResponse;
}
export type HistoryEntry = SliceEntry | StudyEntry;

/** The ids to delete so that at most `max` entries remain, newest kept. */
export function overflow(entries: Pick<HistoryEntry, "id" | "savedAt">[], max = MAX_ENTRIES): string[] {
  return [...entries]
    .sort((a, b) => b.savedAt - a.savedAt)
    .slice(max)
    .map((e) => e.id);
}

/** Newest first. */
export function newestFirst<T extends Pick<HistoryEntry, "savedAt">>(entries: T[]): T[] {
  return [...entries].sort((a, b) => b.savedAt - a.savedAt);
}

let counter = 0;
/** An id unique across reloads (entries outlive the page's own counters). */
export function historyId(): string {
  counter += 1;
  const random = typeof crypto !== "undefined" && "randomUUID" in crypto ? crypto.randomUUID() : Math.random().toString(36).slice(2);
  return `${Date.now().toString(36)}-${counter}-${random}`;
}

/**
 * The history id of a file: the SHA-256 of its content, so the same file analysed again
 * replaces its entry instead of adding one; `fallback` when the content cannot be read or
 * hashed (a restored entry without its bytes, a browser without WebCrypto).
 */
export async function contentId(file: File, fallback: string): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!file.size || !subtle || typeof file.arrayBuffer !== "function") return fallback;
  try {
    const digest = new Uint8Array(await subtle.digest("SHA-256", new Uint8Array(await file.arrayBuffer())));
    return `sha256-${Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  } catch {
    return fallback;
  }
}

/**
 * A study's history id: the SHA-256 of its files' own hashes (sorted, so their order does not
 * matter): the same series analysed again replaces its entry. `fallback` when a file cannot
 * be hashed.
 */
export async function studyContentId(files: File[], fallback: string): Promise<string> {
  const ids: string[] = [];
  for (const file of files) {
    const id = await contentId(file, "");
    if (!id) return fallback;
    ids.push(id);
  }
  return contentId(new File([ids.sort().join("\n")], "study"), fallback);
}

/** A history list as shown: single entries, and the slices of one run gathered in a group
 * (newest first, a group at the place of its newest slice). */
export type HistoryRow =
  | { kind: "entry"; entry: HistoryEntry }
  | { kind: "group"; id: string; entries: SliceEntry[] };

export function historyRows(entries: HistoryEntry[]): HistoryRow[] {
  const rows: HistoryRow[] = [];
  const groups = new Map<string, SliceEntry[]>();
  for (const entry of newestFirst(entries)) {
    const group = entry.kind === "slice" ? entry.group : undefined;
    if (!group) {
      rows.push({ kind: "entry", entry });
      continue;
    }
    const members = groups.get(group.id);
    if (members) members.push(entry as SliceEntry);
    else {
      const first = [entry as SliceEntry];
      groups.set(group.id, first);
      rows.push({ kind: "group", id: group.id, entries: first });
    }
  }
  // A group that kept one slice (the others replaced by later runs) is a plain entry.
  return rows.map((row) => (row.kind === "group" && row.entries.length === 1 ? { kind: "entry", entry: row.entries[0]! } : row));
}

export async function storeFile(file: File): Promise<StoredFile | undefined> {
  if (file.size > MAX_FILE_BYTES || typeof file.arrayBuffer !== "function") return undefined;
  return { name: file.name, type: file.type, bytes: await file.arrayBuffer() };
}

export function restoreFile(stored: StoredFile): File {
  return new File([stored.bytes], stored.name, { type: stored.type });
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function finished(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export class HistoryStore {
  private db: Promise<IDBDatabase>;

  constructor(factory: IDBFactory, name = DB_NAME) {
    this.db = new Promise((resolve, reject) => {
      const open = factory.open(name, VERSION);
      open.onupgradeneeded = () => {
        if (!open.result.objectStoreNames.contains(STORE)) open.result.createObjectStore(STORE, { keyPath: "id" });
      };
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  /** Saves (or replaces, same id) an entry, then drops the oldest beyond MAX_ENTRIES. */
  async put(entry: HistoryEntry): Promise<void> {
    const db = await this.db;
    const tx = db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    store.put(entry);
    const all = (await done(store.getAll())) as HistoryEntry[];
    for (const id of overflow(all)) store.delete(id);
    await finished(tx);
  }

  async list(): Promise<HistoryEntry[]> {
    const db = await this.db;
    return newestFirst((await done(db.transaction(STORE).objectStore(STORE).getAll())) as HistoryEntry[]);
  }

  async clear(): Promise<void> {
    const db = await this.db;
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).clear();
    await finished(tx);
  }

  async close(): Promise<void> {
    (await this.db).close();
  }
}

/** The store, or null where the browser has no IndexedDB (or blocks it). */
export function openHistory(factory: IDBFactory | undefined = globalThis.indexedDB): HistoryStore | null {
  try {
    return factory ? new HistoryStore(factory) : null;
  } catch {
    return null;
  }
}

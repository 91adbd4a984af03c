/**
 * Just enough of a zip reader to show a slice from an uploaded study zip: the server reads
 * the zip itself, the browser only needs one member at a time, for a preview or to ask for
 * that slice's heatmap. Reads the central directory from the end of the file, then one
 * member's bytes on demand (stored or deflated, via the browser's DecompressionStream).
 * Zip64 and encrypted members are not supported: the UI then shows a placeholder.
 */

export interface ZipEntry {
  /** Full path inside the archive, with forward slashes. */
  path: string;
  /** Base name, as the server names the slice. */
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
  encrypted: boolean;
}

const EOCD_SIG = 0x06054b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;

async function bytesOf(blob: Blob, start: number, end: number): Promise<DataView> {
  const buffer = await blob.slice(start, end).arrayBuffer();
  return new DataView(buffer);
}

const baseName = (path: string) => path.replace(/\\/g, "/").replace(/\/+$/, "").split("/").pop() ?? path;

/** The archive's file entries (folders left out), or null when it is not a zip we can read. */
export async function readZipEntries(file: Blob): Promise<ZipEntry[] | null> {
  const tailStart = Math.max(0, file.size - (0xffff + 22));
  const tail = await bytesOf(file, tailStart, file.size);
  let eocd = -1;
  for (let i = tail.byteLength - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === EOCD_SIG) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return null;
  const count = tail.getUint16(eocd + 10, true);
  const cdSize = tail.getUint32(eocd + 12, true);
  const cdOffset = tail.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) return null; // zip64
  if (cdOffset + cdSize > file.size) return null;
  const cd = await bytesOf(file, cdOffset, cdOffset + cdSize);
  const utf8 = new TextDecoder("utf-8");
  const entries: ZipEntry[] = [];
  let at = 0;
  for (let n = 0; n < count && at + 46 <= cd.byteLength; n++) {
    if (cd.getUint32(at, true) !== CENTRAL_SIG) return null;
    const flags = cd.getUint16(at + 8, true);
    const method = cd.getUint16(at + 10, true);
    const compressedSize = cd.getUint32(at + 20, true);
    const size = cd.getUint32(at + 24, true);
    const nameLength = cd.getUint16(at + 28, true);
    const extraLength = cd.getUint16(at + 30, true);
    const commentLength = cd.getUint16(at + 32, true);
    const localHeaderOffset = cd.getUint32(at + 42, true);
    const nameBytes = new Uint8Array(cd.buffer, cd.byteOffset + at + 46, nameLength);
    const path = utf8.decode(nameBytes).replace(/\\/g, "/");
    at += 46 + nameLength + extraLength + commentLength;
    if (path.endsWith("/")) continue;
    entries.push({
      path,
      name: baseName(path),
      method,
      compressedSize,
      size,
      localHeaderOffset,
      encrypted: (flags & 1) === 1,
    });
  }
  return entries;
}

async function inflateRaw(data: Uint8Array): Promise<Uint8Array> {
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(data);
      controller.close();
    },
  }).pipeThrough(new DecompressionStream("deflate-raw") as unknown as ReadableWritablePair<Uint8Array, Uint8Array>);
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.byteLength;
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

const MIME: Record<string, string> = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg" };

/** One member as a File (named by its base name), or null when it cannot be read here. */
export async function extractZipEntry(file: Blob, entry: ZipEntry): Promise<File | null> {
  if (entry.encrypted || (entry.method !== 0 && entry.method !== 8)) return null;
  if (entry.method === 8 && typeof DecompressionStream === "undefined") return null;
  const header = await bytesOf(file, entry.localHeaderOffset, entry.localHeaderOffset + 30);
  if (header.byteLength < 30 || header.getUint32(0, true) !== LOCAL_SIG) return null;
  const start = entry.localHeaderOffset + 30 + header.getUint16(26, true) + header.getUint16(28, true);
  const raw = new Uint8Array(await file.slice(start, start + entry.compressedSize).arrayBuffer());
  const data = entry.method === 0 ? raw : await inflateRaw(raw);
  const ext = entry.name.split(".").pop()?.toLowerCase() ?? "";
  return new File([data as BlobPart], entry.name, { type: MIME[ext] ?? "" });
}

/** The member the server calls `name`: its base name, or its path when base names repeat. */
export function findZipEntry(entries: ZipEntry[], name: string): ZipEntry | undefined {
  return entries.find((e) => e.path === name) ?? entries.find((e) => e.name === name);
}

export function isZipFile(file: File): boolean {
  return /\.zip$/i.test(file.name) || file.type === "application/zip" || file.type === "application/x-zip-compressed";
}

import type {
  BatchItem,
  BatchQuery,
  BatchResponse,
  ModelCard,
  OperatingPoint,
  PredictQuery,
  PredictResponse,
  Monitoring,
  PreviewWindow,
  ReviewRequest,
  SliceResult,
  StudyQuery,
  StudyResponse,
  WorklistEntry,
  WorklistPage,
  TopSliceLayer,
  WorklistStatus,
} from "./types";
import { requestToken, storedToken, storeToken } from "../components/TokenPrompt";

/** An error from the API (or the network), with wording a clinician can act on. */
export class ApiError extends Error {
  /** HTTP status, or 0 when the server could not be reached. */
  readonly status: number;
  /** The server's own `detail`, when it sent one. */
  readonly detail: string | null;

  constructor(status: number, detail: string | null) {
    super(describeError(status, detail).title);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

/** A failed call as the views keep it: the HTTP status (0: not reached) and the server's detail. */
export type Failure = { status: number; detail: string | null };
export const failureOf = (err: unknown): Failure =>
  err instanceof ApiError ? { status: err.status, detail: err.detail } : { status: 0, detail: String(err) };

export interface ErrorDescription {
  title: string;
  hint: string;
}

/** Plain-words explanation of an API failure. */
export function describeError(status: number, detail: string | null = null): ErrorDescription {
  switch (status) {
    case 0:
      return {
        title: "Server unreachable",
        hint: "The analysis server could not be contacted. Check the connection and try again.",
      };
    case 400:
      return {
        title: "Image could not be read",
        hint: "The file is empty or damaged, or its contents could not be decoded as an image.",
      };
    case 401:
      return {
        title: "Access token required",
        hint: "This server only answers authorised users. Enter the access token you were given and try again.",
      };
    case 403:
      return {
        title: "Not allowed with this token",
        hint: "This needs a token with another role. Enter a token that has it and try again.",
      };
    case 413:
      return {
        title: "File too large",
        hint: "This file is over the server's upload limit. Export a single slice and try again.",
      };
    case 415:
      return {
        title: "Not an image",
        hint: "Only PNG, JPEG or DICOM CT slices can be analysed.",
      };
    case 422:
      return {
        title: "Request not accepted",
        hint: "The server rejected the request. Check the file and try again.",
      };
    case 429:
      return { title: "Server busy", hint: "Too many requests at once. Wait a moment and try again." };
    case 503:
      return {
        title: "Server not ready",
        hint: "The model is still loading or unavailable. Try again in a moment.",
      };
    default:
      if (status >= 500) {
        return { title: "Server error", hint: "The analysis failed on the server. Try again; if it persists, contact support." };
      }
      return { title: `Request failed (HTTP ${status})`, hint: detail ?? "The request could not be completed." };
  }
}

/** FastAPI sends {detail: string} or, for validation errors, {detail: [{msg, loc, ...}]}. */
export function detailText(body: unknown): string | null {
  if (!body || typeof body !== "object") return null;
  const detail = (body as { detail?: unknown }).detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    const parts = detail
      .map((d) => (d && typeof d === "object" && "msg" in d ? String((d as { msg: unknown }).msg) : null))
      .filter((m): m is string => !!m);
    return parts.length ? parts.join("; ") : null;
  }
  if (detail && typeof detail === "object" && "message" in detail) return String((detail as { message: unknown }).message);
  return null;
}

function toSearch(query: Record<string, string | number | boolean | undefined | null>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value != null) params.set(key, String(value));
  return params.toString();
}

/**
 * fetch, with `Authorization: Bearer <token>` when this tab holds one (sessionStorage). On a
 * 401 (the server runs with AUTH_TOKEN_HASHES) the user is asked for the token once
 * (components/TokenPrompt) and the request is sent again with it; a token refused again is
 * forgotten. Without a stored token and without a 401 the request is sent as it is.
 */
export async function authorisedFetch(input: string, init: RequestInit = {}): Promise<Response> {
  const send = (token: string | null): Promise<Response> => {
    if (!token) return fetch(input, init);
    const headers = new Headers(init.headers);
    headers.set("Authorization", `Bearer ${token}`);
    return fetch(input, { ...init, headers });
  };
  const response = await send(storedToken());
  if (response.status !== 401) return response;
  let detail: string | null = null;
  try {
    detail = detailText(await response.clone().json());
  } catch {
    detail = null;
  }
  const token = await requestToken(detail);
  if (!token) return response;
  const again = await send(token);
  if (again.status === 401) storeToken(null);
  return again;
}

async function request<T>(input: string, init?: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await authorisedFetch(input, { headers: { Accept: "application/json" }, ...init });
  } catch {
    throw new ApiError(0, null);
  }
  let body: unknown = null;
  const text = await response.text();
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) throw new ApiError(response.status, detailText(body));
  return body as T;
}

/**
 * One slice. `previewWindow` (DICOM only) asks for the preview image in that window; a server
 * without the parameter ignores it, and without `preview_png_base64` the UI shows a placeholder.
 */
export function predict(
  file: File,
  operatingPoint: OperatingPoint,
  explain = true,
  previewWindow?: PreviewWindow,
): Promise<PredictResponse> {
  const form = new FormData();
  form.append("file", file, file.name);
  const query: PredictQuery = { explain, operating_point: operatingPoint, preview_window: previewWindow };
  return request<PredictResponse>(`/predict?${toSearch({ ...query })}`, { method: "POST", body: form });
}

/** The batch endpoint returns no heatmaps: they are fetched per file on demand. */
export function predictBatch(files: File[], operatingPoint: OperatingPoint): Promise<BatchResponse> {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const query: BatchQuery = { operating_point: operatingPoint };
  return request<BatchResponse>(`/predict/batch?${toSearch(query)}`, { method: "POST", body: form });
}

/**
 * One CT series: many slice files or one zip. Heatmaps come back for the top slices only
 * (`explain`); any other slice's heatmap is a /predict?explain=true call on demand.
 */
export function predictStudy(files: File[], operatingPoint: OperatingPoint, explain = true): Promise<StudyResponse> {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const query: StudyQuery = { operating_point: operatingPoint, explain };
  return request<StudyResponse>(`/predict/study?${toSearch(query)}`, { method: "POST", body: form });
}

/**
 * POST /report: the same upload as /predict/study (or one slice) as a PDF report. Resolves to
 * the PDF; rejects with an ApiError in words (400 not one series, 413 too large, ...).
 */
export function getReport(files: File[], operatingPoint: OperatingPoint): Promise<Blob> {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  return fetchBlob(`/report?${toSearch({ operating_point: operatingPoint })}`, {
    method: "POST",
    body: form,
    headers: { Accept: "application/pdf, application/json" },
  });
}

/** A binary answer (a PDF, an image) as a Blob; an error answer as an ApiError in words. */
async function fetchBlob(input: string, init: RequestInit): Promise<Blob> {
  let response: Response;
  try {
    response = await authorisedFetch(input, init);
  } catch {
    throw new ApiError(0, null);
  }
  if (!response.ok) {
    let body: unknown = null;
    try {
      body = JSON.parse(await response.text());
    } catch {
      body = null;
    }
    throw new ApiError(response.status, detailText(body));
  }
  return response.blob();
}

export function getModelCard(): Promise<ModelCard> {
  return request<ModelCard>("/model");
}

/** GET /worklist: flagged first, then the longest waiting; `status` filters (none: all). */
export function getWorklist(query: { status?: WorklistStatus | null; offset?: number; limit?: number }): Promise<WorklistPage> {
  return request<WorklistPage>(`/worklist?${toSearch(query)}`);
}

/** GET /worklist/{id}: the study with every read (a `new` study becomes `opened`). */
export function openWorklistEntry(id: number): Promise<WorklistEntry> {
  return request<WorklistEntry>(`/worklist/${id}`);
}

/**
 * GET /worklist/{id}/top-slices/{rank}?layer=...: a PACS study's top slice (`slice`) or its
 * heatmap (`heatmap`), read by the server from the PACS, as a PNG blob (404 when the server
 * has no PACS configured or the PACS holds no such image).
 */
export function getTopSliceImage(id: number, rank: number, layer: TopSliceLayer): Promise<Blob> {
  return fetchBlob(`/worklist/${id}/top-slices/${rank}?layer=${layer}`, { headers: { Accept: "image/png, application/json" } });
}

/** POST /worklist/{id}/review: a radiologist's read (403 without a reader token). */
export function reviewWorklistEntry(id: number, read: ReviewRequest): Promise<WorklistEntry> {
  return request<WorklistEntry>(`/worklist/${id}/review`, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(read),
  });
}

/** GET /monitoring: sensitivity, specificity, PPV, NPV against the reads. */
export function getMonitoring(): Promise<Monitoring> {
  return request<Monitoring>("/monitoring");
}

export type ServerState = "ready" | "loading" | "unreachable";

/** /ready answers 200 once the model is loaded, 503 while it is loading. */
export async function getReadiness(): Promise<ServerState> {
  try {
    await request<unknown>("/ready");
    return "ready";
  } catch (err) {
    if (err instanceof ApiError && err.status !== 0 && err.status !== 404) return "loading";
    return "unreachable";
  }
}

/** Outcome of one file from a batch call: a prediction or an ApiError. */
export type BatchOutcome = { ok: true; value: SliceResult } | { ok: false; error: ApiError };

export function batchOutcome(item: BatchItem): BatchOutcome {
  if ("error" in item) return { ok: false, error: new ApiError(item.status_code || 400, item.error || null) };
  if (typeof item.prediction !== "number") return { ok: false, error: new ApiError(500, "no prediction for this file") };
  return { ok: true, value: item };
}

import { vi } from "vitest";
import type { ModelCard, PredictResponse } from "../api/types";

export const CARD: ModelCard = {
  name: "custom-cnn",
  version: "1.2.0",
  architecture: "custom CNN, 224×224 input",
  intended_use: "Triage of axial cervical-spine CT slices for radiologist review.",
  operating_points: {
    sensitive: { threshold: 0.3, sensitivity: 0.95, specificity: 0.71 },
    specific: { threshold: 0.7, sensitivity: 0.82, specificity: 0.93 },
  },
  default_operating_point: "sensitive",
  metrics: {
    validation: { n: 700, auc: 0.942, recall: 0.95, specificity: 0.71, confusion_matrix: [[410, 40], [12, 238]] },
    train: { n: 2100, auc: 0.999, confusion_matrix: [[1000, 5], [3, 1092]] },
  },
  data: { description: "Axial cervical-spine CT slices.", files: 1000 },
  caveats: ["Trained on a single public data set.", "Not validated on paediatric patients."],
};

// 1x1 transparent PNG
export const PNG_B64 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

export function prediction(p: number, threshold = 0.3, extra: Partial<PredictResponse> = {}): PredictResponse {
  return {
    result: p >= threshold ? "Potentially Fracture" : "Normal",
    prediction: p,
    threshold,
    operating_point: threshold === 0.3 ? "sensitive" : "specific",
    model: { name: "custom-cnn", version: "1.2.0" },
    latency_ms: 42.5,
    heatmap_png_base64: PNG_B64,
    ...extra,
  };
}

export type Handler = (url: URL, init: RequestInit | undefined) => Response | Promise<Response>;

export const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/** Stubs global fetch: /ready and /model answer by default; `predict` handles POSTs. */
export function mockApi(handlers: { predict?: Handler; batch?: Handler; ready?: Handler; model?: Handler } = {}) {
  const fetchMock = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), "http://localhost");
    if (url.pathname === "/ready") return handlers.ready ? handlers.ready(url, init) : json({ status: "ready" });
    if (url.pathname === "/model") return handlers.model ? handlers.model(url, init) : json(CARD);
    if (url.pathname === "/predict/batch" && handlers.batch) return handlers.batch(url, init);
    if (url.pathname === "/predict" && handlers.predict) return handlers.predict(url, init);
    return json({ detail: "Not Found" }, 404);
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

export const pngFile = (name = "slice.png") =>
  new File([Uint8Array.from(atob(PNG_B64), (c) => c.charCodeAt(0))], name, { type: "image/png" });

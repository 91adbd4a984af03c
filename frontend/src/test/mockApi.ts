import { vi } from "vitest";
import type { ModelCard, PredictResponse, StudyResponse, StudySlice } from "../api/types";

export const CARD: ModelCard = {
  name: "custom-cnn",
  version: "1.2.0",
  architecture: "custom CNN, 224×224 input",
  intended_use: "Triage of axial cervical-spine CT slices for radiologist review.",
  input: { size: 384, channels: 3, serving_dtype: "uint8", window: { level: -70, width: 380 } },
  temperature: 1.5,
  gradcam_layer: "gradcam_conv",
  study: { aggregation: "top2_mean", top_k: 2, operating_points: {} },
  gate: { threshold: -1.2, file: "gate.npz" },
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
  leave_one_series_out: {
    SERIES_A: {
      base_slices: { fracture: 7, normal: 48 },
      model: { auc: 0.812, recall: 0.9, specificity: 0.6 },
      intervals_95: { auc: [0.7, 0.91], recall: [0.8, 1], specificity: [0.5, 0.7] },
      product: { recall: 0.85, specificity: 0.58 },
      refused: 2,
    },
  },
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
    in_distribution: true,
    ct_gate_margin: 0.4,
    ood_distance: 0.4,
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
export function mockApi(
  handlers: {
    predict?: Handler;
    batch?: Handler;
    study?: Handler;
    ready?: Handler;
    model?: Handler;
    report?: Handler;
    /** Any other path (the worklist, monitoring...); 404 when absent. */
    other?: Handler;
  } = {},
) {
  const fetchMock = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input), "http://localhost");
    if (url.pathname === "/ready") return handlers.ready ? handlers.ready(url, init) : json({ status: "ready" });
    if (url.pathname === "/model") return handlers.model ? handlers.model(url, init) : json(CARD);
    if (url.pathname === "/predict/batch" && handlers.batch) return handlers.batch(url, init);
    if (url.pathname === "/predict/study" && handlers.study) return handlers.study(url, init);
    if (url.pathname === "/predict" && handlers.predict) return handlers.predict(url, init);
    if (url.pathname === "/report" && handlers.report) return handlers.report(url, init);
    if (handlers.other) return handlers.other(url, init);
    return json({ detail: "Not Found" }, 404);
  });
  vi.stubGlobal("fetch", fetchMock);
  return fetchMock;
}

export const pngFile = (name = "slice.png") =>
  new File([Uint8Array.from(atob(PNG_B64), (c) => c.charCodeAt(0))], name, { type: "image/png" });

/** A /predict/study answer: slices named `neck (N).png`, top-k = the 2 highest in-distribution. */
export function studyAnswer(
  probabilities: number[],
  { threshold = 0.5, ood = [] as number[], extra = {} as Partial<StudyResponse> } = {},
): StudyResponse {
  const slices: StudySlice[] = probabilities.map((p, i) => ({
    name: `neck (${i + 1}).png`,
    position: i + 1,
    prediction: p,
    in_distribution: !ood.includes(i),
  }));
  const top = slices
    .map((s, index) => ({ ...s, index }))
    .filter((s) => s.in_distribution)
    .sort((a, b) => b.prediction - a.prediction)
    .slice(0, 2);
  const score = top.length ? top.reduce((n, s) => n + s.prediction, 0) / top.length : 0;
  return {
    result: !top.length ? "Not a CT slice" : score >= threshold ? "Potentially Fracture" : "Normal",
    prediction: score,
    threshold,
    operating_point: "sensitive",
    aggregation: "top2_mean",
    slice_count: slices.length,
    slices,
    top_slices: top.map((s) => ({
      index: s.index,
      name: s.name,
      position: s.position,
      prediction: s.prediction,
      heatmap_png_base64: PNG_B64,
    })),
    errors: [],
    position_unit: "index",
    warnings: [],
    vertebrae: null,
    model: { name: "custom-cnn", version: "1.2.0" },
    latency_ms: 812.4,
    ...extra,
  };
}

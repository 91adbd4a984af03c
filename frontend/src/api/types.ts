/**
 * Domain types for the UI, derived from the generated OpenAPI types (schema.d.ts, made by
 * `npm run gen:api` from the backend). Only two deliberate widenings:
 *  - `result` accepts any string: a later model version may add a label, which the UI
 *    renders neutrally rather than failing ("Not a CT slice" is already in the schema);
 *  - the model card keeps the report sections its schema leaves open (metrics, per-series...).
 */
import type { components, operations } from "./schema";

type Schemas = components["schemas"];

/** From the query parameter (the schema's component name for it is not stable across versions). */
export type OperatingPoint = NonNullable<
  NonNullable<operations["predict_predict_post"]["parameters"]["query"]>["operating_point"]
>;
export const OPERATING_POINTS: OperatingPoint[] = ["sensitive", "specific"];

export type ModelRef = Schemas["ModelInfo"];

type KnownResult = Schemas["PredictionResponse"]["result"];
type WidenResult<T> = Omit<T, "result"> & {
  result: KnownResult | (string & {});
};

/** POST /predict 200 body. */
export type PredictResponse = WidenResult<
  operations["predict_predict_post"]["responses"][200]["content"]["application/json"]
>;
export type PredictQuery = NonNullable<operations["predict_predict_post"]["parameters"]["query"]>;
export type BatchQuery = NonNullable<operations["predict_batch_predict_batch_post"]["parameters"]["query"]>;

export type BatchItemPrediction = WidenResult<Schemas["BatchItemPrediction"]> & {
  heatmap_png_base64?: string | null;
  latency_ms?: number;
};
export type BatchItemError = Schemas["BatchItemError"];
export type BatchItem = BatchItemPrediction | BatchItemError;

/** POST /predict/batch 200 body. */
export type BatchResponse = Omit<
  operations["predict_batch_predict_batch_post"]["responses"][200]["content"]["application/json"],
  "results"
> & { results: BatchItem[] };

export type ErrorBody = Schemas["ErrorResponse"];

/**
 * GET /model: the bundle's model card, typed by the backend's `ml_model.card.ModelCard` (the
 * server validates it at start-up, so the typed sections are always there); report sections
 * the card does not type (metrics, leave_one_series_out, test...) arrive as open objects.
 */
export type ModelCard = operations["model_card_model_get"]["responses"][200]["content"]["application/json"] & {
  known_limitations?: unknown;
};

export type StudyQuery = NonNullable<operations["predict_study_route_predict_study_post"]["parameters"]["query"]>;
/** POST /predict/study 200 body: one verdict for a whole series, and every slice's score. */
export type StudyResponse = WidenResult<Schemas["StudyResponse"]>;
export type StudySlice = Schemas["StudySlice"];
export type StudyTopSlice = Schemas["StudyTopSlice"];
export type StudyFileError = Schemas["StudyFileError"];
/** A study bundle's P(fracture) per vertebra, C1..C7 (`vertebrae` of a study answer). */
export type VertebraProbabilities = Schemas["VertebraProbabilities"];

/** What the UI keeps per file: a /predict answer or a /predict/batch entry (no latency, no heatmap). */
export type SliceResult = Omit<PredictResponse, "latency_ms"> & { latency_ms?: number; filename?: string };

/** Header facts of a DICOM upload (never patient identifiers), `dicom` in a /predict answer. */
export type DicomInfo = Schemas["DicomInfo"];

/** `/predict?preview_window=`: the window of the DICOM preview image. `model` (the server's
 * default, so the first preview is in it) is the model card's window: what the model was given. */
export type PreviewWindow = Schemas["PreviewWindow"];
export const PREVIEW_WINDOWS: { id: PreviewWindow; label: string; caption: string }[] = [
  { id: "model", label: "Model's window", caption: "Shown in the model's window: the slice as the model saw it" },
  { id: "bone", label: "Bone", caption: "Shown in the bone window (level 400, width 1800 HU)" },
  { id: "soft_tissue", label: "Soft tissue", caption: "Shown in the soft-tissue window (level 40, width 400 HU)" },
];
/** The window a DICOM preview was asked in: the server's default (`model`) until another is chosen. */
export const DEFAULT_PREVIEW_WINDOW: PreviewWindow = "model";

/** The triage worklist (GET /worklist, GET /worklist/{id}, POST /worklist/{id}/review). */
export type WorklistEntry = Schemas["WorklistEntry"];
export type WorklistPage = Schemas["WorklistPage"];
export type WorklistStatus = Schemas["WorklistStatus"];
export type TopSliceLayer = Schemas["TopSliceLayer"];
export const WORKLIST_STATUSES: WorklistStatus[] = ["new", "opened", "reviewed"];
export type ReviewRequest = Schemas["ReviewRequest"];
export type ReviewEntry = Schemas["ReviewEntry"];
export type VertebraLevel = ReviewEntry["levels"][number];
export const VERTEBRA_LEVELS: VertebraLevel[] = ["C1", "C2", "C3", "C4", "C5", "C6", "C7"];
/** GET /monitoring: the product's calls against the latest read of each reviewed study. */
export type Monitoring = Schemas["MonitoringResponse"];
export type Performance = Schemas["PerformanceOut"];
export type Proportion = Schemas["ProportionOut"];
export type Drift = Schemas["DriftOut"];
export type ScoreDrift = Schemas["ScoreDriftOut"];

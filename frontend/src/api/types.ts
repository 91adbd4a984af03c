/**
 * Domain types for the UI, derived from the generated OpenAPI types (schema.d.ts, made by
 * `npm run gen:api` from the backend). Only two deliberate widenings:
 *  - `result` accepts any string: a later model version may add a label, which the UI
 *    renders neutrally rather than failing ("Not a CT slice" is already in the schema);
 *  - the model card keeps its open-ended extra keys (intended use, caveats, ...).
 */
import type { components, operations } from "./schema";

type Schemas = components["schemas"];

export type OperatingPoint = Schemas["OperatingPoint"];
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

/** GET /model: the bundle's model_card.json passed through, unknown keys included. */
export type ModelCard = operations["model_card_model_get"]["responses"][200]["content"]["application/json"] & {
  architecture?: string;
  intended_use?: unknown;
  caveats?: unknown;
  limitations?: unknown;
  known_limitations?: unknown;
  data?: unknown;
  default_operating_point?: string;
};

export type StudyQuery = NonNullable<operations["predict_study_route_predict_study_post"]["parameters"]["query"]>;
/** POST /predict/study 200 body: one verdict for a whole series, and every slice's score. */
export type StudyResponse = WidenResult<Schemas["StudyResponse"]>;
export type StudySlice = Schemas["StudySlice"];
export type StudyTopSlice = Schemas["StudyTopSlice"];
export type StudyFileError = Schemas["StudyFileError"];

/** What the UI keeps per file: a /predict answer or a /predict/batch entry (no latency, no heatmap). */
export type SliceResult = Omit<PredictResponse, "latency_ms"> & { latency_ms?: number; filename?: string };

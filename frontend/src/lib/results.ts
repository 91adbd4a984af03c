export const RESULT_POSITIVE = "Potentially Fracture";
export const RESULT_NEGATIVE = "Normal";
/** The out-of-distribution guard refused the input: no fracture call was made. */
export const RESULT_NOT_CT = "Not a CT slice";

export type Tone = "positive" | "negative" | "neutral";

/** Warning colour for a possible fracture, calm for normal, neutral for anything else. */
export function resultTone(result: string): Tone {
  if (result === RESULT_POSITIVE) return "positive";
  if (result === RESULT_NEGATIVE) return "negative";
  return "neutral";
}

/** True when the model made no fracture call: the input does not look like an axial CT slice. */
export function isRefused(result: { result: string; in_distribution?: boolean | null }): boolean {
  return result.result === RESULT_NOT_CT || result.in_distribution === false;
}

export const REFUSAL_TEXT = "This image does not look like an axial CT slice, so no fracture call was made.";

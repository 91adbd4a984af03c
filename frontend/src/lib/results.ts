export const RESULT_POSITIVE = "Potentially Fracture";
export const RESULT_NEGATIVE = "Normal";

export type Tone = "positive" | "negative" | "neutral";

/** Warning colour for a possible fracture, calm for normal, neutral for anything else. */
export function resultTone(result: string): Tone {
  if (result === RESULT_POSITIVE) return "positive";
  if (result === RESULT_NEGATIVE) return "negative";
  return "neutral";
}

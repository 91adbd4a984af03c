export const RESULT_POSITIVE = "Potentially Fracture";
export const RESULT_NEGATIVE = "Normal";
/** The CT gate refused the input: no fracture call was made. */
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

export const REFUSAL_TEXT =
  "This image does not look like an axial CT slice of the neck, so no fracture call was made and no score is shown.";
/** What to do instead of a refused image, in plain words (no gate numbers: they invite misuse). */
export const REFUSAL_ADVICE =
  "The model reads axial CT slices of the cervical spine only: DICOM from the scanner or PACS, or a PNG/JPEG " +
  "exported in a CT window. Photos, screenshots, scout views, MR or X-ray images and CT of other body regions are " +
  "refused. Send the axial neck slice itself, or the whole series as a study.";
/** Shown where a refused slice's score would be: the score of an image the model cannot read means nothing. */
export const NOT_SCORED = "not scored";

/** The CT gate refused a slice that is CT all the same (issue 26): no fracture call was made. */
export const RESULT_OUTSIDE_RANGE = "CT outside the model's range";

/** What each `outside_reason` means and what to send instead: the same texts as the server's verdict.OUTSIDE_REASONS (the PDF report; a backend test checks they agree). */
export const OUTSIDE_REASON_TEXT: Record<string, string> = {
  window:
    "This looks like a CT slice exported in a window the model cannot judge (bone, brain or lung), so no " +
    "fracture call was made. Send the DICOM: the model puts its Hounsfield units through its own window.",
  region:
    "This looks like a CT slice, but not an axial cervical-spine slice like those the model was trained on " +
    "(another region, a reformat or overlays), so no fracture call was made. Send the axial neck series as DICOM.",
};

/** The one-line explanation of a refused answer: its reason where the API gives one. */
export function refusalText(result: { result: string; outside_reason?: string | null }): string {
  if (result.result === RESULT_OUTSIDE_RANGE) {
    return OUTSIDE_REASON_TEXT[result.outside_reason ?? ""] ?? "This is a CT slice the model cannot judge, so no fracture call was made. Send the DICOM.";
  }
  return REFUSAL_TEXT;
}

/** The model card's limits, in card order (the same keys the model panel and the report read). */
export function cardLimits(card: unknown): string[] {
  if (!card || typeof card !== "object") return [];
  const c = card as Record<string, unknown>;
  const out: string[] = [];
  for (const key of ["limitations", "known_limitations", "caveats"]) {
    const value = c[key];
    if (typeof value === "string") out.push(value);
    else if (Array.isArray(value)) out.push(...value.filter((v): v is string => typeof v === "string" && !!v));
  }
  return [...new Set(out)];
}

/**
 * A short caveat for every positive call while the model card lists the level shortcut as a
 * limit: in the training data fracture slices lie high in the neck, so the vertebral level
 * itself pushes the score. Null when the card says nothing of it.
 */
export function levelCaveat(card: unknown): string | null {
  const limit = cardLimits(card).find((l) => /level shortcut|vertebral level|level and label/i.test(l));
  if (!limit) return null;
  return (
    "The model partly reads the vertebral level: upper-neck slices (skull base to C2/C3) score higher, so a " +
    "normal C1/C2 slice may be called a fracture and a fracture low in the neck may be missed (model card: " +
    "level shortcut)."
  );
}

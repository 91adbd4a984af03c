import type { DicomInfo } from "../api/types";

const mm = (value: number) => `${Number.isInteger(value) ? value : Number(value.toFixed(2))} mm`;
const isNumber = (value: unknown): value is number => typeof value === "number" && Number.isFinite(value);

/**
 * The DICOM header facts the API sends (`dicom`), as label/value pairs for display. Only these
 * acquisition facts: the API sends no patient field, and none would be shown.
 */
export function dicomFacts(info: DicomInfo | null | undefined): [string, string][] {
  if (!info) return [];
  const facts: [string, string][] = [];
  if (info.modality) facts.push(["Modality", info.modality]);
  if (info.series_description) facts.push(["Series", info.series_description]);
  if (isNumber(info.slice_location_mm)) facts.push(["Slice location", mm(info.slice_location_mm)]);
  const spacing = info.pixel_spacing_mm;
  if (Array.isArray(spacing) && spacing.length && spacing.every(isNumber)) {
    facts.push(["Pixel spacing", `${spacing.map((v) => mm(v).replace(" mm", "")).join(" × ")} mm`]);
  } else if (isNumber(spacing)) {
    facts.push(["Pixel spacing", mm(spacing)]);
  }
  if (isNumber(info.slice_thickness_mm)) facts.push(["Slice thickness", mm(info.slice_thickness_mm)]);
  return facts;
}

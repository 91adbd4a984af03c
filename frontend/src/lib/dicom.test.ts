import { describe, expect, it } from "vitest";
import { dicomFacts } from "./dicom";
import { levelCaveat } from "./results";

describe("DICOM facts", () => {
  it("shows the acquisition facts that are there, in mm", () => {
    expect(
      dicomFacts({
        modality: "CT",
        series_description: "C-spine bone 1mm",
        slice_location_mm: -77.204,
        pixel_spacing_mm: [0.661468, 0.661468],
        slice_thickness_mm: 5,
      }),
    ).toEqual([
      ["Modality", "CT"],
      ["Series", "C-spine bone 1mm"],
      ["Slice location", "-77.2 mm"],
      ["Pixel spacing", "0.66 × 0.66 mm"],
      ["Slice thickness", "5 mm"],
    ]);
    expect(dicomFacts({ pixel_spacing_mm: [0.5, 0.5], modality: null })).toEqual([
      ["Pixel spacing", "0.5 × 0.5 mm"],
    ]);
    expect(dicomFacts(null)).toEqual([]);
  });
});

describe("level caveat", () => {
  it("is there only while the model card lists the level shortcut", () => {
    expect(levelCaveat({ caveats: ["Level shortcut: fracture slices lie high in the neck."] })).toMatch(
      /vertebral level/,
    );
    expect(levelCaveat({ limitations: ["Fracture and vertebral level cannot be told apart."] })).not.toBeNull();
    expect(levelCaveat({ caveats: ["Trained on one data set."] })).toBeNull();
    expect(levelCaveat(null)).toBeNull();
  });
});

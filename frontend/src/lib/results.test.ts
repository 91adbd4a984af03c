import { describe, expect, it } from "vitest";
import { REFUSAL_TEXT, RESULT_OUTSIDE_RANGE, isRefused, refusalText, resultTone } from "./results";

describe("CT outside the model's range (issue 26)", () => {
  it("is a refusal, shown neutrally, with its reason's explanation", () => {
    const answer = { result: RESULT_OUTSIDE_RANGE, in_distribution: false, outside_reason: "window" };
    expect(isRefused(answer)).toBe(true);
    expect(resultTone(answer.result)).toBe("neutral");
    expect(refusalText(answer)).toMatch(/window.*Send the DICOM/);
    expect(refusalText({ ...answer, outside_reason: "region" })).toMatch(/another region/);
  });

  it("leaves the not-CT text as it was", () => {
    expect(refusalText({ result: "Not a CT slice" })).toBe(REFUSAL_TEXT);
  });
});

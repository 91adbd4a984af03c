import { describe, expect, it } from "vitest";
import { niceStep, positionAxisLabel, sliceScale } from "./chartScale";

describe("sliceScale", () => {
  it("spaces evenly spaced positions evenly, inside the plot", () => {
    const s = sliceScale([1, 2, 3, 4], 0, 400);
    expect(s.toScale).toBe(true);
    expect(s.x).toEqual([50, 150, 250, 350]);
    expect(s.bandLeft[0]).toBe(0);
    expect(s.bandRight[3]).toBe(400);
    expect(s.bandRight[1]).toBe(s.bandLeft[2]);
    expect(s.barWidth).toBe(28); // 72 wide slots: bars capped at 28
  });

  it("draws a gap in the series as a gap: slice 18 then slice 100", () => {
    const s = sliceScale([16, 17, 18, 100], 0, 1000);
    const near = s.x[1]! - s.x[0]!;
    const far = s.x[3]! - s.x[2]!;
    expect(far / near).toBeCloseTo(82);
    expect(s.barWidth).toBeLessThan(near);
  });

  it("keeps head on the left when positions fall towards the feet (DICOM z)", () => {
    const s = sliceScale([-10, -12.5, -15, -30], 100, 200);
    expect(s.x[0]).toBeLessThan(s.x[1]!);
    expect(s.x[3]).toBeGreaterThan(s.x[2]!);
    const values = s.ticks.map((t) => t.value);
    expect(values).toContain(-15);
    // ticks lie where their value would
    const at15 = s.ticks.find((t) => t.value === -15)!;
    expect(at15.x).toBeCloseTo(s.x[2]!);
  });

  it("falls back to even spacing when positions repeat or are not ordered", () => {
    expect(sliceScale([1, 1, 2], 0, 300).toScale).toBe(false);
    expect(sliceScale([1, 3, 2], 0, 300).toScale).toBe(false);
    expect(sliceScale([1, 3, 2], 0, 300).x).toEqual([50, 150, 250]);
  });

  it("handles one slice and none", () => {
    const one = sliceScale([7.5], 10, 100);
    expect(one.x).toEqual([60]);
    expect(one.ticks).toEqual([{ value: 7.5, x: 60 }]);
    expect(sliceScale([], 0, 100).x).toEqual([]);
  });
});

describe("axis", () => {
  it("picks round steps", () => {
    expect(niceStep(84)).toBe(20);
    expect(niceStep(10)).toBe(2);
    expect(niceStep(0)).toBe(1);
  });

  it("labels the axis in mm only when the API says so", () => {
    expect(positionAxisLabel("mm")).toMatch(/mm/);
    expect(positionAxisLabel(undefined)).toBe("Slice number");
    expect(positionAxisLabel(null)).toBe("Slice number");
  });
});

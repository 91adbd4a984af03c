import { describe, expect, it } from "vitest";
import { clampPan, readerKey, wheelSteps, zoomStep } from "./viewer";

describe("viewer helpers", () => {
  it("zooms in steps between 1× and 8×", () => {
    expect(zoomStep(1, 1)).toBe(1.25);
    expect(zoomStep(1.25, -1)).toBe(1);
    expect(zoomStep(1, -1)).toBe(1);
    let z = 1;
    for (let i = 0; i < 30; i++) z = zoomStep(z, 1);
    expect(z).toBe(8);
  });

  it("keeps the zoomed image over the stage", () => {
    expect(clampPan({ x: 500, y: -500 }, 2, 400, 200)).toEqual({ x: 200, y: -100 });
    expect(clampPan({ x: 5, y: 5 }, 1, 400, 200)).toEqual({ x: 0, y: 0 });
  });

  it("turns a wheel notch into one slice and adds up trackpad deltas", () => {
    expect(wheelSteps(0, 100)).toEqual({ steps: 1, pending: 0 });
    expect(wheelSteps(0, -100)).toEqual({ steps: -1, pending: 0 });
    let pending = 0;
    let steps = 0;
    for (let i = 0; i < 10; i++) {
      const r = wheelSteps(pending, 12);
      pending = r.pending;
      steps += r.steps;
    }
    expect(steps).toBe(1);
    expect(wheelSteps(60, -30)).toEqual({ steps: 0, pending: -30 }); // a turn starts afresh
    expect(wheelSteps(0, 3, 1)).toEqual({ steps: 1, pending: 0 }); // 3 lines
    expect(wheelSteps(0, 5000).steps).toBe(10);
  });

  it("maps reader keys", () => {
    expect(readerKey({ key: "ArrowDown" })).toEqual({ type: "step", delta: 1 });
    expect(readerKey({ key: "ArrowLeft" })).toEqual({ type: "step", delta: -1 });
    expect(readerKey({ key: "PageDown" })).toEqual({ type: "step", delta: 10 });
    expect(readerKey({ key: "End" })).toEqual({ type: "last" });
    expect(readerKey({ key: "2" })).toEqual({ type: "top", rank: 2 });
    expect(readerKey({ key: "0" })).toBeNull();
    expect(readerKey({ key: "ArrowDown", ctrlKey: true })).toBeNull();
  });
});

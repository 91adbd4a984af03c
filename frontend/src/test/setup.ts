import "@testing-library/jest-dom/vitest";
import { cleanup } from "@testing-library/react";
import { afterEach, vi } from "vitest";

// jsdom has no object URLs; previews only need a stable string.
let n = 0;
if (typeof URL.createObjectURL !== "function") {
  URL.createObjectURL = vi.fn(() => `blob:preview-${++n}`) as typeof URL.createObjectURL;
  URL.revokeObjectURL = vi.fn();
}

afterEach(() => {
  cleanup();
  if (typeof localStorage !== "undefined") localStorage.clear(); // the analyse-on-drop setting
  vi.restoreAllMocks();
  vi.unstubAllGlobals();
});

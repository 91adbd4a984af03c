import { IDBFactory } from "fake-indexeddb";
import { describe, expect, it } from "vitest";
import { prediction, studyAnswer } from "../test/mockApi";
import {
  HistoryStore,
  MAX_ENTRIES,
  contentId,
  historyRows,
  studyContentId,
  newestFirst,
  openHistory,
  overflow,
  restoreFile,
  storeFile,
  type SliceEntry,
} from "./history";

const slice = (id: string, savedAt: number): SliceEntry => ({
  id,
  savedAt,
  kind: "slice",
  label: `${id}.png`,
  result: prediction(0.8),
});

describe("history store (IndexedDB)", () => {
  it("keeps entries across openings, newest first, and replaces one with the same id", async () => {
    const factory = new IDBFactory();
    const first = new HistoryStore(factory);
    await first.put(slice("a", 1));
    await first.put({ id: "s", savedAt: 3, kind: "study", label: "series", study: studyAnswer([0.1, 0.9]) });
    await first.put(slice("b", 2));
    await first.put({ ...slice("a", 4), result: prediction(0.1) });
    await first.close();

    const again = new HistoryStore(factory); // "after a reload"
    const entries = await again.list();
    expect(entries.map((e) => e.id)).toEqual(["a", "s", "b"]);
    expect(entries[0]!.kind === "slice" && entries[0]!.result.result).toBe("Normal");
    expect(entries[1]!.kind === "study" && entries[1]!.study.slice_count).toBe(2);
  });

  it("keeps a slice's file, and drops the oldest past the limit", async () => {
    const store = new HistoryStore(new IDBFactory());
    const file = new File([new Uint8Array([1, 2, 3])], "c5.png", { type: "image/png" });
    const stored = await storeFile(file);
    await store.put({ ...slice("f", 0), file: stored });
    for (let i = 1; i <= MAX_ENTRIES + 2; i++) await store.put(slice(`n${i}`, i));
    const entries = await store.list();
    expect(entries).toHaveLength(MAX_ENTRIES);
    expect(entries.map((e) => e.id)).not.toContain("f");

    await store.put({ ...slice("g", 100), file: stored });
    const [g] = await store.list();
    const back = restoreFile((g as SliceEntry).file!);
    expect(back.name).toBe("c5.png");
    expect(back.type).toBe("image/png");
    expect(new Uint8Array(await back.arrayBuffer())).toEqual(new Uint8Array([1, 2, 3]));
  });

  it("empties on clear", async () => {
    const store = new HistoryStore(new IDBFactory());
    await store.put(slice("a", 1));
    await store.clear();
    expect(await store.list()).toEqual([]);
  });

  it("is absent, not broken, without IndexedDB", () => {
    expect(openHistory(undefined)).toBeNull();
  });

  it("orders and trims in plain functions", () => {
    const entries = [
      { id: "x", savedAt: 1 },
      { id: "y", savedAt: 3 },
      { id: "z", savedAt: 2 },
    ];
    expect(newestFirst(entries).map((e) => e.id)).toEqual(["y", "z", "x"]);
    expect(overflow(entries, 2)).toEqual(["x"]);
  });
});

describe("one entry per file content, runs grouped", () => {
  it("names an entry by the SHA-256 of its file's bytes, whatever the file is called", async () => {
    const a = await contentId(new File([new Uint8Array([1, 2, 3])], "1.dcm"), "x");
    expect(a).toMatch(/^sha256-[0-9a-f]{64}$/);
    expect(await contentId(new File([new Uint8Array([1, 2, 3])], "again.dcm"), "y")).toBe(a);
    expect(await contentId(new File([new Uint8Array([1, 2, 4])], "1.dcm"), "z")).not.toBe(a);
    expect(await contentId(new File([], "kept-without-bytes.png"), "fallback")).toBe("fallback");
  });

  it("names a study by its files' contents, in any order", async () => {
    const f = (n: number) => new File([new Uint8Array([n, n, n])], `neck (${n}).png`);
    const one = await studyContentId([f(1), f(2)], "x");
    expect(one).toMatch(/^sha256-/);
    expect(await studyContentId([f(2), f(1)], "y")).toBe(one);
    expect(await studyContentId([f(1), f(3)], "z")).not.toBe(one);
    expect(await studyContentId([f(1), new File([], "empty.png")], "fallback")).toBe("fallback");
  });

  it("gathers the slices of one run in a group at the place of its newest slice", () => {
    const run = { id: "run", size: 3 };
    const rows = historyRows([
      { ...slice("a", 1), group: run },
      { ...slice("b", 2), group: run },
      slice("alone", 3),
      { ...slice("c", 4), group: run },
      { ...slice("lonely", 5), group: { id: "other", size: 2 } },
    ]);
    expect(rows.map((r) => (r.kind === "entry" ? r.entry.id : r.entries.map((e) => e.id).join("+")))).toEqual([
      "lonely",
      "c+b+a",
      "alone",
    ]);
  });
});

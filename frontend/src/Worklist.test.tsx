import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import App from "./App";
import type { Monitoring, Performance, ReviewRequest, WorklistEntry } from "./api/types";
import { formatAge, formatProportion, readFracture } from "./lib/worklist";
import { json, mockApi, PNG_B64, type Handler } from "./test/mockApi";

const MINUTE = 60_000;
const ago = (minutes: number) => new Date(Date.now() - minutes * MINUTE).toISOString();

function entry(id: number, extra: Partial<WorklistEntry> = {}): WorklistEntry {
  const flagged = extra.verdict ? extra.verdict === "Potentially Fracture" : id % 2 === 1;
  return {
    id,
    source: "pacs",
    study_uid: `1.2.3.${id}`,
    series_uid: `1.2.3.${id}.1`,
    identifiers: null,
    arrived_at: ago(12),
    analysed_at: ago(11),
    verdict: flagged ? "Potentially Fracture" : "Normal",
    flagged,
    score: flagged ? 0.91 : 0.08,
    threshold: 0.3,
    operating_point: "sensitive",
    top_slices: [
      { index: 41, name: "IM-0042.dcm", position: -120.5, prediction: 0.95 },
      { index: 40, name: "IM-0041.dcm", position: -118, prediction: 0.87 },
    ],
    model: { name: "custom-cnn", version: "1.2.0" },
    manufacturer: "GE MEDICAL SYSTEMS",
    manufacturer_model: "Revolution CT",
    status: "new",
    opened_at: null,
    reviews: [],
    ...extra,
  };
}

/** A worklist server in memory: GET /worklist (server order given), GET /worklist/{id}, review. */
function worklistServer(initial: WorklistEntry[], { reviewStatus = 201, imageStatus = 200, imageFailures = 0 } = {}) {
  const state = { entries: initial.map((e) => ({ ...e })), requests: [] as URL[], reads: [] as ReviewRequest[], imageFailures };
  const handler: Handler = async (url, init) => {
    state.requests.push(url);
    if (/^\/worklist\/\d+\/top-slices\/\d+$/.test(url.pathname)) {
      if (imageStatus !== 200) return json({ detail: "no PACS is configured for the worklist's images (WORKLIST_PACS_URL)" }, imageStatus);
      if (state.imageFailures-- > 0) return json({ detail: "the PACS did not answer for slice 1.2.3" }, 502);
      return new Response(Uint8Array.from(atob(PNG_B64), (c) => c.charCodeAt(0)), { headers: { "Content-Type": "image/png" } });
    }
    if (url.pathname === "/worklist") {
      const statuses = url.searchParams.getAll("status");
      const offset = Number(url.searchParams.get("offset") ?? 0);
      const limit = Number(url.searchParams.get("limit") ?? 50);
      const items = state.entries.filter((e) => !statuses.length || statuses.includes(e.status));
      return json({ items: items.slice(offset, offset + limit), total: items.length, offset, limit });
    }
    const match = /^\/worklist\/(\d+)(\/review)?$/.exec(url.pathname);
    const found = match && state.entries.find((e) => e.id === Number(match[1]));
    if (!match || !found) return json({ detail: "Not Found" }, 404);
    if (match[2]) {
      if (reviewStatus !== 201) return json({ detail: "this needs a token with the reader role" }, reviewStatus);
      const read = JSON.parse(String(init?.body)) as ReviewRequest;
      state.reads.push(read);
      found.status = "reviewed";
      found.reviews = [
        ...found.reviews,
        {
          id: found.reviews.length + 1,
          fracture: read.fracture,
          levels: read.levels ?? [],
          note: read.note ?? null,
          reader: "ab12cd34",
          reviewed_at: new Date().toISOString(),
        },
      ];
      return json(found, 201);
    }
    if (found.status === "new") Object.assign(found, { status: "opened", opened_at: new Date().toISOString() });
    return json(found);
  };
  return { state, handler };
}

const setup = () => userEvent.setup();

async function openTab(name: "Worklist" | "Monitoring", other: Handler, pollMs = 10_000) {
  mockApi({ other });
  render(<App readyPollMs={20} analyseOnDrop={false} history={null} worklistPollMs={pollMs} />);
  await screen.findByText("Model ready");
  const user = setup();
  expect(screen.getByRole("tab", { name: "Single slices" })).toHaveAttribute("aria-selected", "true");
  await user.click(screen.getByRole("tab", { name }));
  return user;
}

describe("worklist helpers", () => {
  it("formats a study's age and a proportion with its interval", () => {
    const now = Date.parse("2026-12-05T10:00:00Z");
    expect(formatAge("2026-12-05T09:59:40Z", now)).toBe("just now");
    expect(formatAge("2026-12-05T09:48:00Z", now)).toBe("12 min");
    expect(formatAge("2026-12-05T07:00:00Z", now)).toBe("3 h");
    expect(formatAge("2026-12-05T06:55:00Z", now)).toBe("3 h 5 min");
    expect(formatAge("2026-12-03T06:00:00Z", now)).toBe("2 d 4 h");
    expect(formatProportion({ successes: 7, total: 8, estimate: 0.875, lower: 0.529, upper: 0.978 })).toBe(
      "87.5 % (52.9–97.8 %)",
    );
    expect(formatProportion({ successes: 0, total: 0, estimate: null, lower: null, upper: null })).toBe("—");
    // Disagreeing with a flagged study records no fracture; with a normal one, a fracture.
    expect(readFracture(true, false)).toBe(false);
    expect(readFracture(false, false)).toBe(true);
    expect(readFracture(false, true)).toBe(false);
  });
});

describe("worklist view", () => {
  it("lists studies in the server's order, flagged first, with age, status, model and scanner", async () => {
    const { handler } = worklistServer([
      entry(3),
      entry(2, { verdict: "Normal", arrived_at: ago(125), status: "reviewed", manufacturer: null, manufacturer_model: null }),
    ]);
    await openTab("Worklist", handler);
    const table = await screen.findByTestId("worklist-table");
    const rows = within(table).getAllByTestId("worklist-row");
    expect(rows.map((r) => r.dataset.id)).toEqual(["3", "2"]);
    expect(within(rows[0]!).getByTestId("worklist-verdict")).toHaveTextContent("Potentially Fracture");
    expect(rows[0]).toHaveTextContent("91%");
    expect(rows[0]).toHaveTextContent("12 min");
    expect(rows[0]).toHaveTextContent("New");
    expect(rows[0]).toHaveTextContent("custom-cnn 1.2.0");
    expect(rows[0]).toHaveTextContent("GE MEDICAL SYSTEMS / Revolution CT");
    expect(within(rows[1]!).getByTestId("worklist-verdict")).toHaveTextContent("Normal");
    expect(rows[1]).toHaveTextContent("2 h 5 min");
    expect(rows[1]).toHaveTextContent("Reviewed");
    expect(screen.getByTestId("worklist-updated")).toHaveTextContent(/^Updated \d\d:\d\d:\d\d$/);
    expect(screen.queryByRole("navigation", { name: "Worklist pages" })).not.toBeInTheDocument();
  });

  it("polls: a new flagged study appears without a reload, and is announced", async () => {
    const { state, handler } = worklistServer([entry(2, { verdict: "Normal" })]);
    await openTab("Worklist", handler, 40);
    await screen.findByTestId("worklist-table");
    expect(screen.getAllByTestId("worklist-row")).toHaveLength(1);
    state.entries.unshift(entry(5));
    await waitFor(() => expect(screen.getAllByTestId("worklist-row").map((r) => r.dataset.id)).toEqual(["5", "2"]));
    expect(screen.getByTestId("worklist-announcer")).toHaveTextContent("1 new flagged study in the worklist.");
  });

  it("refreshes when the window regains focus, and stops polling on another tab", async () => {
    const { state, handler } = worklistServer([entry(1)]);
    const user = await openTab("Worklist", handler);
    await screen.findByTestId("worklist-table");
    const before = state.requests.filter((u) => u.pathname === "/worklist").length;
    window.dispatchEvent(new Event("focus"));
    await waitFor(() => expect(state.requests.filter((u) => u.pathname === "/worklist").length).toBe(before + 1));
    await user.click(screen.getByRole("tab", { name: "Single slices" }));
    window.dispatchEvent(new Event("focus"));
    await new Promise((r) => setTimeout(r, 30));
    expect(state.requests.filter((u) => u.pathname === "/worklist").length).toBe(before + 1);
  });

  it("filters by status and pages through more studies than a page holds", async () => {
    const many = Array.from({ length: 30 }, (_, i) => entry(i + 1, { status: i < 3 ? "reviewed" : "new" }));
    const { state, handler } = worklistServer(many);
    const user = await openTab("Worklist", handler);
    await screen.findByTestId("worklist-table");
    expect(screen.getAllByTestId("worklist-row")).toHaveLength(25);
    const pages = screen.getByRole("navigation", { name: "Worklist pages" });
    expect(within(pages).getByTestId("worklist-range")).toHaveTextContent("1–25 of 30");
    expect(within(pages).getByRole("button", { name: "Previous" })).toBeDisabled();
    await user.click(within(pages).getByRole("button", { name: "Next" }));
    await waitFor(() => expect(screen.getAllByTestId("worklist-row")).toHaveLength(5));
    expect(within(pages).getByTestId("worklist-range")).toHaveTextContent("26–30 of 30");
    expect(state.requests.at(-1)!.searchParams.get("offset")).toBe("25");

    await user.selectOptions(screen.getByLabelText("Status"), "reviewed");
    await waitFor(() => expect(screen.getAllByTestId("worklist-row")).toHaveLength(3));
    const last = state.requests.at(-1)!;
    expect(last.searchParams.getAll("status")).toEqual(["reviewed"]);
    expect(last.searchParams.get("offset")).toBe("0");
    expect(screen.queryByRole("navigation", { name: "Worklist pages" })).not.toBeInTheDocument();
  });

  it("shows an empty state", async () => {
    await openTab("Worklist", worklistServer([]).handler);
    expect(await screen.findByTestId("worklist-empty")).toHaveTextContent("No study yet");
  });
});

describe("worklist entry and the read", () => {
  it("opens a study with Enter: its call, top slices, times and reads", async () => {
    const read = { id: 1, fracture: true, levels: ["C2" as const], note: "dens", reader: "0f0f0f0f", reviewed_at: ago(3) };
    const { handler } = worklistServer([entry(7, { status: "reviewed", reviews: [read] })]);
    const user = await openTab("Worklist", handler);
    const open = await screen.findByRole("button", { name: "Open study 7, Potentially Fracture" });
    open.focus();
    await user.keyboard("{Enter}");
    const panel = await screen.findByTestId("worklist-entry");
    expect(within(panel).getByRole("heading", { name: "Study 7" })).toHaveFocus();
    expect(within(panel).getByTestId("entry-verdict")).toHaveTextContent("Potentially Fracture");
    expect(within(panel).getByTestId("entry-score")).toHaveTextContent("91%");
    expect(panel).toHaveTextContent("Threshold30%");
    expect(panel).toHaveTextContent("Operating pointsensitive");
    expect(panel).toHaveTextContent("ScannerGE MEDICAL SYSTEMS / Revolution CT");
    expect(panel).toHaveTextContent("Study UID1.2.3.7");
    const tops = within(panel).getByTestId("entry-top-slices");
    const rows = within(tops).getAllByRole("row").slice(1);
    expect(rows[0]).toHaveTextContent("42IM-0042.dcm-120.595%");
    expect(rows[1]).toHaveTextContent("41IM-0041.dcm-11887%");
    const reads = within(panel).getAllByTestId("worklist-read");
    expect(reads).toHaveLength(1);
    expect(reads[0]).toHaveTextContent("Fracture · C2");
    expect(reads[0]).toHaveTextContent("reader 0f0f0f0f");
    expect(reads[0]).toHaveTextContent("dens");
  });

  it("shows a PACS study's top slice and its heatmap from the server, one top slice at a time", async () => {
    const { state, handler } = worklistServer([entry(7)]);
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: "Open study 7, Potentially Fracture" }));
    const images = await screen.findByTestId("entry-images");
    expect(await within(images).findByTestId("entry-slice-image")).toHaveAttribute("src", expect.stringMatching(/^blob:/));
    expect(await within(images).findByTestId("entry-heatmap-image")).toHaveAttribute("alt", "Heatmap of slice 42");
    expect(within(images).getByTestId("entry-images-shown")).toHaveTextContent("Top 1: slice 42 (IM-0042.dcm), score 95%");
    const asked = () => state.requests.filter((u) => u.pathname.includes("/top-slices/")).map((u) => `${u.pathname}${u.search}`);
    expect(asked()).toEqual(["/worklist/7/top-slices/1?layer=slice", "/worklist/7/top-slices/1?layer=heatmap"]);
    await user.click(within(images).getByRole("button", { name: "Top 2 · slice 41" }));
    expect(within(images).getByRole("button", { name: "Top 2 · slice 41" })).toHaveAttribute("aria-pressed", "true");
    await waitFor(() => expect(asked()).toContain("/worklist/7/top-slices/2?layer=heatmap"));
    expect(within(images).getByTestId("entry-images-shown")).toHaveTextContent("Top 2: slice 41");
    expect(screen.queryByTestId("entry-pacs-note")).toBeNull();
  });

  it("says why an image did not come from the PACS, and asks again on Try again", async () => {
    const { state, handler } = worklistServer([entry(7)], { imageFailures: 2 });
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: "Open study 7, Potentially Fracture" }));
    const failed = await screen.findByTestId("entry-heatmap-image-error");
    expect(failed).toHaveTextContent("the PACS did not answer for slice 1.2.3");
    expect(await screen.findByTestId("entry-slice-image-error")).toHaveTextContent("did not answer");
    const heatmaps = () => state.requests.filter((u) => u.search === "?layer=heatmap").length;
    expect(heatmaps()).toBe(1);
    await user.click(within(failed).getByRole("button", { name: "Try again: Heatmap of slice 42" }));
    expect(await screen.findByTestId("entry-heatmap-image")).toHaveAttribute("src", expect.stringMatching(/^blob:/));
    expect(heatmaps()).toBe(2);
    expect(screen.getByTestId("entry-slice-image-error")).toBeInTheDocument(); // asked again only when told
  });

  it("says why when the server has no PACS to read the images from; an upload asks for none", async () => {
    const { state, handler } = worklistServer([entry(7), entry(8, { source: "upload" })], { imageStatus: 404 });
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: "Open study 7, Potentially Fracture" }));
    expect(await screen.findByTestId("entry-slice-image-error")).toHaveTextContent("no PACS is configured");
    expect(await screen.findByTestId("entry-heatmap-image-error")).toHaveTextContent("WORKLIST_PACS_URL");
    await user.click(screen.getByRole("button", { name: "Close" }));
    const before = state.requests.length;
    await user.click(await screen.findByRole("button", { name: "Open study 8, Normal" }));
    expect(await screen.findByTestId("entry-pacs-note")).toHaveTextContent("read the slices in the PACS viewer");
    expect(state.requests.slice(before).some((u) => u.pathname.includes("/top-slices/"))).toBe(false);
  });

  it("D disagrees with a flagged study: no fracture, the read shows and the list says reviewed", async () => {
    const { state, handler } = worklistServer([entry(3), entry(4)]);
    const user = await openTab("Worklist", handler);
    const row = (await screen.findAllByTestId("worklist-row"))[0]!;
    await user.click(row.querySelector("td")!); // a click anywhere on the row
    const panel = await screen.findByTestId("worklist-entry");
    await waitFor(() => expect(within(row).getByTestId("worklist-status")).toHaveTextContent("Opened"));
    expect(within(panel).getByTestId("entry-no-reads")).toBeInTheDocument();
    expect(within(panel).getByTestId("review-disagree")).toHaveTextContent("Disagree: no fracture");
    // Levels are kept only with a fracture read: ticked, then dropped by a "no fracture" read.
    await user.click(within(panel).getByRole("checkbox", { name: "C3" }));
    await user.click(document.body);
    await user.keyboard("d");
    await within(panel).findByTestId("worklist-read");
    expect(state.reads).toEqual([{ fracture: false, levels: [], note: null }]);
    expect(within(panel).getByTestId("worklist-read")).toHaveTextContent("No fracture");
    expect(within(panel).getByTestId("entry-status")).toHaveTextContent("Reviewed");
    expect(screen.getByTestId("review-announcer")).toHaveTextContent("Read recorded for study 3: no fracture.");
    await waitFor(() => expect(within(row).getByTestId("worklist-status")).toHaveTextContent("Reviewed"));
  });

  it("Agree with levels and a note; typing a/d in the note is text, not a shortcut", async () => {
    const { state, handler } = worklistServer([entry(1)]);
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: /Open study 1/ }));
    const panel = await screen.findByTestId("worklist-entry");
    await user.click(within(panel).getByRole("checkbox", { name: "C2" }));
    await user.click(within(panel).getByRole("checkbox", { name: "C5" }));
    await user.type(within(panel).getByLabelText("Note (optional)"), "dad");
    expect(state.reads).toHaveLength(0);
    await user.click(within(panel).getByRole("button", { name: /Agree: fracture/ }));
    await within(panel).findByTestId("worklist-read");
    expect(state.reads).toEqual([{ fracture: true, levels: ["C2", "C5"], note: "dad" }]);
    expect(within(panel).getByTestId("worklist-read")).toHaveTextContent("Fracture · C2, C5");
  });

  it("A on a normal study agrees (no fracture); D would record a fracture", async () => {
    const { state, handler } = worklistServer([entry(2, { verdict: "Normal" })]);
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: /Open study 2/ }));
    const panel = await screen.findByTestId("worklist-entry");
    expect(within(panel).getByTestId("review-disagree")).toHaveTextContent("Disagree: fracture");
    await user.keyboard("a");
    await within(panel).findByTestId("worklist-read");
    expect(state.reads).toEqual([{ fracture: false, levels: [], note: null }]);
  });

  it("a 403 says a reader token is needed", async () => {
    const { state, handler } = worklistServer([entry(1)], { reviewStatus: 403 });
    const user = await openTab("Worklist", handler);
    await user.click(await screen.findByRole("button", { name: /Open study 1/ }));
    const panel = await screen.findByTestId("worklist-entry");
    await user.keyboard("a");
    const alert = await within(panel).findByRole("alert");
    expect(alert).toHaveTextContent("Reader token required");
    expect(alert).toHaveTextContent("this needs a token with the reader role (HTTP 403)");
    expect(within(panel).getByRole("button", { name: "Enter a reader token" })).toBeInTheDocument();
    expect(within(panel).getByTestId("entry-no-reads")).toBeInTheDocument();
    expect(state.entries[0]!.status).toBe("opened");
  });
});

function performance(tp: number, fp: number, tn: number, fn: number, noCall = 0): Performance {
  const prop = (s: number, t: number) =>
    t
      ? { successes: s, total: t, estimate: s / t, lower: Math.max(0, s / t - 0.2), upper: Math.min(1, s / t + 0.1) }
      : { successes: 0, total: 0, estimate: null, lower: null, upper: null };
  return {
    reviewed: tp + fp + tn + fn + noCall,
    no_call: noCall,
    true_positive: tp,
    false_positive: fp,
    true_negative: tn,
    false_negative: fn,
    sensitivity: prop(tp, tp + fn),
    specificity: prop(tn, tn + fp),
    ppv: prop(tp, tp + fp),
    npv: prop(tn, tn + fn),
  };
}

// GET /monitoring's drift for a card without an out-of-fold score distribution.
const noDrift: Monitoring["drift"] = {
  model: "custom-cnn 1.2.0",
  reference: null,
  psi_unavailable: "the card has no out-of-fold score distribution",
  psi_warn: 0.2,
  refusal_warn: 0.2,
  recent_days: 28,
  recent: null,
  psi_by_week: {},
  refusals_by_week: {},
};

describe("monitoring view", () => {
  it("shows an empty state when nothing is reviewed yet", async () => {
    const empty: Monitoring = { overall: performance(0, 0, 0, 0), by_model_version: {}, by_scanner: {}, by_week: {}, pipeline_failures: {}, drift: noDrift };
    await openTab("Monitoring", (url) => (url.pathname === "/monitoring" ? json(empty) : json({}, 404)));
    expect(await screen.findByTestId("monitoring-empty")).toHaveTextContent("No study has been reviewed yet");
    expect(screen.queryByTestId("monitoring-overall")).not.toBeInTheDocument();
  });

  it("shows the drift without reads: why there is no PSI, and the weekly refusal shares", async () => {
    const share = (k: number, n: number, warning: boolean) => ({
      successes: k, total: n, estimate: k / n, lower: 0.05, upper: 0.7, warning,
    });
    const empty: Monitoring = {
      overall: performance(0, 0, 0, 0), by_model_version: {}, by_scanner: {}, by_week: {}, pipeline_failures: {},
      drift: {
        ...noDrift,
        refusals_by_week: {
          "2026-W49": { "Not a CT slice": share(1, 4, true), "CT outside the model's range": share(0, 4, false) },
        },
      },
    };
    await openTab("Monitoring", (url) => (url.pathname === "/monitoring" ? json(empty) : json({}, 404)));
    expect(await screen.findByTestId("monitoring-psi-unavailable")).toHaveTextContent(
      "not available (the card has no out-of-fold score distribution)",
    );
    expect(screen.queryByTestId("monitoring-psi")).not.toBeInTheDocument();
    const row = within(screen.getByTestId("monitoring-refusals")).getByTestId("monitoring-refusal-row");
    expect(within(row).getByRole("rowheader")).toHaveTextContent("2026-W49");
    expect(row.querySelector('[data-answer="Not a CT slice"]')).toHaveTextContent("25 %95 % interval 5–70 % High");
    expect(row.querySelector(`[data-answer="CT outside the model's range"]`)).not.toHaveTextContent("High");
  });

  it("tables the PSI per window against the card's reference, flagging a shift", async () => {
    const figure = (n: number, psi: number, warning: boolean) => ({ n, counts: [n], psi, warning });
    const data: Monitoring = {
      overall: performance(0, 0, 0, 0), by_model_version: {}, by_scanner: {}, by_week: {}, pipeline_failures: {},
      drift: {
        ...noDrift,
        psi_unavailable: null,
        reference: { edges: [0, 1], fractions: [1], n: 400, source: "out-of-fold" },
        recent: figure(600, 0.31, true),
        psi_by_week: { "2026-W50": figure(300, 0.52, true), "2026-W49": figure(300, 0.01, false) },
      },
    };
    await openTab("Monitoring", (url) => (url.pathname === "/monitoring" ? json(data) : json({}, 404)));
    const table = await screen.findByTestId("monitoring-psi");
    expect(within(table).getAllByTestId("monitoring-psi-row").map((r) => r.textContent)).toEqual([
      "Last 28 days6000.31Shift",
      "2026-W493000.01",
      "2026-W503000.52Shift",
    ]);
    expect(screen.getByText("Score drift (PSI) of custom-cnn 1.2.0")).toBeInTheDocument();
  });

  it("tables overall, by model version, scanner and week, with counts and intervals", async () => {
    const data: Monitoring = {
      overall: performance(4, 1, 3, 0, 1),
      by_model_version: { "custom-cnn 1.2.0": performance(4, 1, 3, 0, 1) },
      by_scanner: { "GE / Revolution": performance(3, 1, 1, 0), "unknown": performance(1, 0, 2, 0, 1) },
      by_week: { "2026-W49": performance(4, 1, 3, 0, 1) },
      drift: noDrift,
      pipeline_failures: { identity: 1, error: 2 },
    };
    const calls: URL[] = [];
    const user = await openTab("Monitoring", (url) => {
      calls.push(url);
      return url.pathname === "/monitoring" ? json(data) : json({}, 404);
    });
    const overall = await screen.findByTestId("monitoring-overall");
    const row = within(overall).getByTestId("monitoring-row");
    expect(within(row).getByTestId("monitoring-reviewed")).toHaveTextContent("9");
    expect(row).toHaveTextContent("All studies9413011");
    expect(row.querySelector('[data-measure="sensitivity"]')).toHaveTextContent("100 %95 % interval 80–100 %");
    expect(row.querySelector('[data-measure="specificity"]')).toHaveTextContent("75 %95 % interval 55–85 %");
    expect(row.querySelector('[data-measure="ppv"]')).toHaveTextContent("80 %95 % interval 60–90 %");
    expect(row.querySelector('[data-measure="npv"]')).toHaveTextContent("100 %95 % interval 80–100 %");
    expect(within(screen.getByTestId("monitoring-model")).getByRole("rowheader")).toHaveTextContent("custom-cnn 1.2.0");
    expect(screen.getByTestId("monitoring-pipeline-failures")).toHaveTextContent(
      "3 series the PACS pipeline gave up on and has not analysed since (error 2, identity 1)",
    );
    expect(
      within(screen.getByTestId("monitoring-scanner"))
        .getAllByRole("rowheader")
        .map((h) => h.textContent),
    ).toEqual(["GE / Revolution", "unknown"]);
    expect(within(screen.getByTestId("monitoring-week")).getByRole("rowheader")).toHaveTextContent("2026-W49");
    expect(within(overall).getByRole("columnheader", { name: "Sensitivity" })).toBeInTheDocument();
    const before = calls.length;
    await user.click(screen.getByRole("button", { name: "Refresh" }));
    await waitFor(() => expect(calls.length).toBe(before + 1));
  });
});

import { fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { deflateRawSync } from "node:zlib";
import { describe, expect, it, vi } from "vitest";
import App from "./App";
import { CARD, PNG_B64, json, mockApi, pngFile, prediction, studyAnswer } from "./test/mockApi";

const setup = () => userEvent.setup({ applyAccept: false });

const SERIES = [0.02, 0.05, 0.91, 0.97, 0.4, 0.03, 0.88];

async function openStudy() {
  render(<App readyPollMs={20} analyseOnDrop={false} history={null} />);
  await screen.findByText("Model ready");
  const user = setup();
  await user.click(screen.getByRole("tab", { name: "Study (whole series)" }));
  return user;
}

const seriesFiles = (n: number) => Array.from({ length: n }, (_, i) => pngFile(`neck (${i + 1}).png`));

function inFolder(file: File, path: string): File {
  Object.defineProperty(file, "webkitRelativePath", { value: path });
  return file;
}

async function analyse(user: ReturnType<typeof setup>, files: File[]) {
  await user.upload(screen.getByLabelText(/select files or a \.zip/i), files);
  await user.click(screen.getByRole("button", { name: "Analyse series" }));
}

describe("mode tabs", () => {
  it("switches between single slices and study mode by click and arrow keys", async () => {
    mockApi();
    render(<App readyPollMs={20} analyseOnDrop={false} history={null} />);
    await screen.findByText("Model ready");
    const user = setup();
    const slices = screen.getByRole("tab", { name: "Single slices" });
    const study = screen.getByRole("tab", { name: "Study (whole series)" });
    expect(slices).toHaveAttribute("aria-selected", "true");
    expect(screen.getByRole("tabpanel", { name: "Single slices" })).toBeVisible();
    expect(screen.queryByRole("heading", { name: "Analyse a whole series" })).not.toBeInTheDocument();

    await user.click(study);
    expect(study).toHaveAttribute("aria-selected", "true");
    expect(screen.getByRole("heading", { name: "Analyse a whole series" })).toBeInTheDocument();
    expect(screen.queryByRole("heading", { name: "Analyse CT slices" })).not.toBeInTheDocument();

    study.focus();
    await user.keyboard("{ArrowLeft}");
    expect(slices).toHaveAttribute("aria-selected", "true");
    expect(slices).toHaveFocus();
    await user.keyboard("{End}");
    expect(screen.getByRole("tab", { name: "Monitoring" })).toHaveFocus();
    await user.keyboard("{ArrowLeft}{ArrowLeft}");
    expect(study).toHaveFocus();
    expect(study).toHaveAttribute("aria-selected", "true");
  });

  it("keeps each mode's work when switching back and forth", async () => {
    mockApi({ study: () => json(studyAnswer(SERIES)) });
    const user = await openStudy();
    await analyse(user, seriesFiles(SERIES.length));
    await screen.findByTestId("study-verdict");
    await user.click(screen.getByRole("tab", { name: "Single slices" }));
    await user.click(screen.getByRole("tab", { name: "Study (whole series)" }));
    expect(screen.getByTestId("study-result")).toHaveTextContent("Potentially Fracture");
  });
});

describe("study view", () => {
  it("posts the series to /predict/study and shows the verdict, the chart, the slice and the table", async () => {
    const fetchMock = mockApi({ study: () => json(studyAnswer(SERIES, { ood: [6] })) });
    const user = await openStudy();
    await analyse(user, seriesFiles(SERIES.length));

    // The request: every file in `files`, the operating point, heatmaps for the top slices.
    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/predict/study"))!;
    expect(String(call[0])).toBe("/predict/study?operating_point=sensitive&explain=true");
    const sent = (call[1]!.body as FormData).getAll("files") as File[];
    expect(sent.map((f) => f.name)).toEqual(SERIES.map((_, i) => `neck (${i + 1}).png`));

    // The verdict on top, in words and as a score against the threshold.
    const verdict = await screen.findByTestId("study-verdict");
    expect(within(verdict).getByTestId("study-result")).toHaveTextContent("Potentially Fracture");
    expect(within(verdict).getByTestId("study-result")).toHaveClass("badge--positive", "badge--large");
    const meter = within(verdict).getByRole("meter", { name: "Study score" });
    expect(meter).toHaveAttribute("aria-valuenow", "94");
    expect(meter.getAttribute("aria-valuetext")).toMatch(/at or above the sensitive threshold of 50%/);
    expect(within(verdict).getByText(/the mean of the 2 highest slice probabilities/)).toBeInTheDocument();
    const stats = within(verdict).getByTestId("study-stats");
    expect(within(stats).getByText("Slices scored").nextSibling).toHaveTextContent("6");
    expect(within(stats).getByText("Not a CT slice").nextSibling).toHaveTextContent("1");
    expect(within(stats).getByText("Above threshold").nextSibling).toHaveTextContent("2");

    // The chart: one bar per slice in series order, CT-gate-refused and top slices marked.
    const chart = screen.getByRole("img", { name: /fracture probability of each slice, head to foot/i });
    expect(chart).toHaveAccessibleDescription(/7 slices from position 1 \(head\) to 7 \(foot\), drawn to scale.*2 of them at or above.*1 not a CT slice/);
    const bars = within(chart).getAllByTestId("chart-bar");
    expect(bars).toHaveLength(7);
    expect(bars.map((b) => b.getAttribute("data-kind"))).toEqual([
      "below",
      "below",
      "above",
      "above",
      "below",
      "below",
      "ood",
    ]);
    expect(bars[3]).toHaveAttribute("data-top", "1");
    expect(bars[2]).toHaveAttribute("data-top", "2");
    expect(bars[6]).not.toHaveAttribute("data-top");
    expect(chart.querySelector(".chart__threshold")).toHaveTextContent("study threshold 50%");

    // The most suspicious slice is shown first, with the heatmap from the study answer.
    const viewer = screen.getByTestId("study-viewer");
    expect(within(viewer).getByRole("heading", { name: "Slice 4 of 7" })).toBeInTheDocument();
    expect(within(viewer).getByTestId("viewer-name")).toHaveTextContent("neck (4).png · position 4");
    expect(await within(viewer).findByRole("img", { name: "Slice neck (4).png" })).toHaveAttribute(
      "src",
      expect.stringMatching(/^blob:/),
    );
    const heat = within(viewer).getByRole("img", { name: /grad-cam heatmap overlaid on neck \(4\)\.png/i });
    expect(heat.getAttribute("src")).toBe(`data:image/png;base64,${PNG_B64}`);
    expect(within(viewer).getByText("Top 1", { selector: ".tag" })).toBeInTheDocument();
    expect(bars[3]).toHaveClass("chart__slot--selected");

    // The table alternative: every slice, the selected one marked.
    const table = screen.getByRole("table", { name: /fracture probability of each slice/i });
    const rows = within(table).getAllByRole("row").slice(1);
    expect(rows).toHaveLength(7);
    expect(rows[3]).toHaveAttribute("aria-current", "true");
    expect(rows[6]).toHaveTextContent("Not a CT slice");
    expect(rows[6]).toHaveTextContent("not scored");
    expect(rows[6]).not.toHaveTextContent("%");
    expect(screen.getByTestId("study-announcer")).toHaveTextContent(/Study result: Potentially Fracture/);
  });

  it("selects slices from the chart, the table and the scrubber; fetches other heatmaps on demand", async () => {
    const fetchMock = mockApi({
      study: () => json(studyAnswer(SERIES)),
      predict: (url, init) => {
        expect(url.searchParams.get("explain")).toBe("true");
        expect(((init!.body as FormData).get("file") as File).name).toBe("neck (1).png");
        return json(prediction(0.02));
      },
    });
    const user = await openStudy();
    await analyse(user, seriesFiles(SERIES.length));
    const viewer = await screen.findByTestId("study-viewer");

    // A bar: slice 1 has no heatmap yet; it is fetched with /predict?explain=true on request.
    await user.click(screen.getAllByTestId("chart-bar")[0]!);
    expect(within(viewer).getByRole("heading", { name: "Slice 1 of 7" })).toBeInTheDocument();
    expect(within(viewer).queryByTestId("viewer-heatmap")).not.toBeInTheDocument();
    expect(within(viewer).getByText(/below the study threshold of 50%/i)).toBeInTheDocument();
    await user.click(within(viewer).getByRole("button", { name: "Show heatmap" }));
    expect(await within(viewer).findByRole("img", { name: /grad-cam heatmap overlaid on neck \(1\)\.png/i })).toBeInTheDocument();
    const singles = () => fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict?"));
    expect(singles()).toHaveLength(1);

    // A table row.
    const table = screen.getByRole("table", { name: /fracture probability of each slice/i });
    await user.click(within(table).getByRole("button", { name: "neck (5).png" }));
    expect(within(viewer).getByRole("heading", { name: "Slice 5 of 7" })).toBeInTheDocument();
    expect(within(table).getByRole("button", { name: "neck (5).png" })).toHaveAttribute("aria-pressed", "true");

    // The scrubber and the previous/next buttons.
    const scrubber = screen.getByRole("slider", { name: "Selected slice" });
    expect(scrubber).toHaveAttribute("aria-valuetext", expect.stringMatching(/^Slice 5 of 7, position 5: neck \(5\)\.png/));
    fireEvent.change(scrubber, { target: { value: "2" } });
    expect(within(viewer).getByRole("heading", { name: "Slice 3 of 7" })).toBeInTheDocument();
    await user.click(within(viewer).getByRole("button", { name: "Next slice" }));
    expect(within(viewer).getByRole("heading", { name: "Slice 4 of 7" })).toBeInTheDocument();

    // Back to slice 1: the fetched heatmap is kept.
    await user.click(screen.getAllByTestId("chart-bar")[0]!);
    expect(within(viewer).getByTestId("viewer-heatmap")).toBeInTheDocument();
    expect(singles()).toHaveLength(1);
  });

  it("shows a study bundle's C1–C7 bars beside the slice chart, and none for a slice bundle", async () => {
    const vertebrae = { C1: 0.03, C2: 0.81, C3: 0.12, C4: 0.004, C5: 0.02, C6: 0.04, C7: 0.995 };
    let answer = studyAnswer(SERIES, { extra: { vertebrae, aggregation: "study_head", prediction: 0.9 } });
    mockApi({ study: () => json(answer) });
    const user = await openStudy();
    await analyse(user, seriesFiles(SERIES.length));

    const panel = await screen.findByTestId("study-vertebrae");
    const chart = within(panel).getByRole("img", { name: "Fracture probability of each vertebra, C1 to C7" });
    expect(chart).toHaveAccessibleDescription(
      "Fracture probability per cervical vertebra, head to foot: C1 3%, C2 81%, C3 12%, C4 <1%, C5 2%, C6 4%, " +
        "C7 >99%. Highest: C7.",
    );
    const bars = within(chart).getAllByTestId("vertebra-bar");
    expect(bars.map((b) => b.getAttribute("data-vertebra"))).toEqual(["C1", "C2", "C3", "C4", "C5", "C6", "C7"]);
    expect(bars[1]).toHaveTextContent("81%");
    // Bar lengths follow the probabilities.
    const width = (bar: HTMLElement) => Number(bar.querySelector(".vertebra__bar")!.getAttribute("width"));
    expect(width(bars[1]!)).toBeGreaterThan(width(bars[2]!));
    expect(width(bars[6]!)).toBeGreaterThan(width(bars[1]!));
    // Beside the slice chart, in the same panel.
    const slices = screen.getByRole("img", { name: /fracture probability of each slice, head to foot/i });
    expect(slices.closest(".chart-row")).toBe(panel.closest(".chart-row"));
    expect(screen.getByTestId("study-verdict")).toHaveTextContent(/the study head's probability of a fracture anywhere in C1–C7/);

    // A slice bundle's answer (vertebrae null): the slice chart alone.
    answer = studyAnswer(SERIES);
    await user.click(screen.getByRole("button", { name: "Analyse again" }));
    await waitFor(() => expect(screen.queryByTestId("study-vertebrae")).not.toBeInTheDocument());
    expect(screen.getByRole("img", { name: /fracture probability of each slice, head to foot/i })).toBeInTheDocument();
    expect(screen.getByTestId("study-verdict")).toHaveTextContent(/the mean of the 2 highest slice probabilities/);
  });

  it("re-asks at the other operating point", async () => {
    const fetchMock = mockApi({
      study: (url) =>
        json(
          studyAnswer(SERIES, {
            threshold: url.searchParams.get("operating_point") === "specific" ? 0.95 : 0.5,
            extra: { operating_point: (url.searchParams.get("operating_point") ?? "sensitive") as "sensitive" },
          }),
        ),
      model: () =>
        json({
          ...CARD,
          study: { operating_points: { sensitive: { threshold: 0.5 }, specific: { threshold: 0.95 } } },
        }),
    });
    const user = await openStudy();
    const panel = screen.getByRole("tabpanel", { name: "Study (whole series)" });
    expect(await within(panel).findByText(/threshold 95%/)).toBeInTheDocument(); // the card's study threshold
    await analyse(user, seriesFiles(SERIES.length));
    expect(await screen.findByTestId("study-result")).toHaveTextContent("Potentially Fracture");
    await user.click(within(panel).getByRole("radio", { name: /specific/i }));
    await waitFor(() => expect(screen.getByTestId("study-result")).toHaveTextContent("Normal"));
    const urls = fetchMock.mock.calls.map(([u]) => String(u)).filter((u) => u.startsWith("/predict/study"));
    expect(urls.at(-1)).toContain("operating_point=specific");
  });

  it("says so, in words, when no slice is a CT slice", async () => {
    mockApi({ study: () => json(studyAnswer([0.9, 0.8], { ood: [0, 1] })) });
    const user = await openStudy();
    await analyse(user, seriesFiles(2));
    const verdict = await screen.findByTestId("study-verdict");
    expect(within(verdict).getByTestId("study-result")).toHaveTextContent("Not a CT slice");
    expect(within(verdict).getByTestId("study-result")).toHaveClass("badge--neutral");
    expect(within(verdict).getByText(/no fracture call was made/i)).toBeInTheDocument();
    expect(within(verdict).queryByRole("meter")).not.toBeInTheDocument();
    const bars = screen.getAllByTestId("chart-bar");
    expect(bars.every((b) => b.getAttribute("data-kind") === "ood")).toBe(true);
    const viewer = screen.getByTestId("study-viewer");
    expect(within(viewer).getByText(/left out of the study score/)).toBeInTheDocument();
    expect(within(viewer).queryByRole("button", { name: "Show heatmap" })).not.toBeInTheDocument();
  });

  it("lists files the server could not read", async () => {
    mockApi({
      study: () =>
        json(studyAnswer(SERIES, { extra: { errors: [{ name: "notes (8).txt", error: "the file is not a recognised image or DICOM" }] } })),
    });
    const user = await openStudy();
    await analyse(user, seriesFiles(SERIES.length));
    const errors = await screen.findByTestId("study-file-errors");
    expect(errors).toHaveTextContent("1 file was not read and left out");
    expect(errors).toHaveTextContent("notes (8).txt: the file is not a recognised image or DICOM");
    expect(within(screen.getByTestId("study-stats")).getByText("Files not read").nextSibling).toHaveTextContent("1");
  });

  it.each([
    [400, "the files come from 2 different series (SeriesInstanceUID); upload one series at a time", "Not one series"],
    [400, "no slice number in the file name of: scan.png", "Not one series"],
    [413, "1200 files sent; at most 1000 slices per study", "Study too large"],
    [503, "the model is not loaded yet", "Server not ready"],
  ])("explains HTTP %i in words", async (status, detail, title) => {
    mockApi({ study: () => json({ detail }, status) });
    const user = await openStudy();
    await analyse(user, seriesFiles(3));
    const alert = await screen.findByTestId("study-error");
    expect(alert).toHaveAttribute("role", "alert");
    expect(alert).toHaveTextContent(title);
    expect(alert).toHaveTextContent(detail);
    expect(screen.queryByTestId("study-verdict")).not.toBeInTheDocument();
  });

  it("takes a folder: hidden files left out, the folder named", async () => {
    const fetchMock = mockApi({ study: () => json(studyAnswer([0.1, 0.2])) });
    const user = await openStudy();
    const files = [
      inFolder(pngFile("neck (1).png"), "series-7/neck (1).png"),
      inFolder(new File(["x"], ".DS_Store"), "series-7/.DS_Store"),
      inFolder(pngFile("neck (2).png"), "series-7/sub/neck (2).png"),
    ];
    await user.upload(screen.getByLabelText(/select a folder/i), files);
    const selection = screen.getByTestId("study-selection");
    expect(selection).toHaveTextContent("series-7");
    expect(selection).toHaveTextContent("2 files");
    await user.click(screen.getByRole("button", { name: "Analyse series" }));
    await screen.findByTestId("study-verdict");
    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/predict/study"))!;
    expect(((call[1]!.body as FormData).getAll("files") as File[]).map((f) => f.name)).toEqual([
      "neck (1).png",
      "neck (2).png",
    ]);
    expect(screen.getByLabelText(/select a folder/i)).toHaveAttribute("webkitdirectory");
  });

  it("takes a zip: sent as is, the selected slice unpacked in the browser for its preview", async () => {
    const png = Uint8Array.from(atob(PNG_B64), (c) => c.charCodeAt(0));
    const zip = makeZip([
      { path: "series/neck (1).png", data: png, deflate: false },
      { path: "series/neck (2).png", data: png, deflate: true },
    ]);
    const fetchMock = mockApi({
      study: () =>
        json(
          studyAnswer([0.2, 0.9], {
            extra: {
              top_slices: [{ index: 1, name: "neck (2).png", position: 2, prediction: 0.9, heatmap_png_base64: PNG_B64 }],
            },
          }),
        ),
    });
    const created = vi.spyOn(URL, "createObjectURL");
    const user = await openStudy();
    await analyse(user, [new File([zip as BlobPart], "study.zip", { type: "application/zip" })]);
    const viewer = await screen.findByTestId("study-viewer");
    const sent = (fetchMock.mock.calls.find(([u]) => String(u).startsWith("/predict/study"))![1]!.body as FormData).getAll(
      "files",
    ) as File[];
    expect(sent.map((f) => f.name)).toEqual(["study.zip"]);
    expect(screen.getByTestId("study-selection")).toHaveTextContent("zip archive");

    // Slice 2 (deflated member), then slice 1 (stored member): both unpacked for the preview.
    await within(viewer).findByRole("img", { name: "Slice neck (2).png" });
    await user.click(screen.getAllByTestId("chart-bar")[0]!);
    await within(viewer).findByRole("img", { name: "Slice neck (1).png" });
    const made = created.mock.calls.map(([f]) => f as File);
    for (const name of ["neck (1).png", "neck (2).png"]) {
      const file = made.find((f) => f.name === name)!;
      expect(new Uint8Array(await file.arrayBuffer())).toEqual(png);
    }
  });
});

describe("study input", () => {
  it("walks a dropped folder (in batches, subfolders too) and names the study after it", async () => {
    const fileEntry = (name: string) => ({
      isFile: true,
      isDirectory: false,
      name,
      file: (ok: (f: File) => void) => ok(pngFile(name)),
    });
    const dirEntry = (name: string, children: unknown[][]) => {
      const batches = [...children, []];
      return {
        isFile: false,
        isDirectory: true,
        name,
        createReader: () => ({ readEntries: (ok: (e: unknown[]) => void) => ok(batches.shift() ?? []) }),
      };
    };
    const folder = dirEntry("series-3", [
      [fileEntry("neck (1).png"), fileEntry("neck (2).png")],
      [dirEntry("more", [[fileEntry("neck (3).png")]]), fileEntry(".DS_Store")],
    ]);
    const dataTransfer = { items: [{ kind: "file", webkitGetAsEntry: () => folder }], files: [] };
    const fetchMock = mockApi({ study: () => json(studyAnswer([0.1, 0.2, 0.3])) });
    const user = await openStudy();
    fireEvent.drop(screen.getByTestId("study-drop-zone"), { dataTransfer });
    const selection = await screen.findByTestId("study-selection");
    expect(selection).toHaveTextContent("series-3");
    expect(selection).toHaveTextContent("3 files");
    await user.click(screen.getByRole("button", { name: "Analyse series" }));
    await screen.findByTestId("study-verdict");
    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/predict/study"))!;
    expect(((call[1]!.body as FormData).getAll("files") as File[]).map((f) => f.name)).toEqual([
      "neck (1).png",
      "neck (2).png",
      "neck (3).png",
    ]);
  });

  it("asks for a zip instead of sending more files than one request may carry", async () => {
    const fetchMock = mockApi();
    const user = await openStudy();
    await user.upload(screen.getByLabelText(/select files or a \.zip/i), seriesFiles(1001));
    expect(screen.getByTestId("study-too-many")).toHaveTextContent(
      "This selection has 1,001 files; one upload takes at most 1,000. Zip the series folder",
    );
    expect(screen.getByRole("button", { name: "Analyse series" })).toBeDisabled();
    expect(fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict/study"))).toHaveLength(0);
  });

  it("explains the form parser's file limit as too many files, not as a mixed series", async () => {
    mockApi({ study: () => json({ detail: "Too many files. Maximum number of files is 1000." }, 400) });
    const user = await openStudy();
    await analyse(user, seriesFiles(3));
    const alert = await screen.findByTestId("study-error");
    expect(alert).toHaveTextContent("Too many files");
    expect(alert).toHaveTextContent("upload the .zip instead");
    expect(alert).not.toHaveTextContent("Not one series");
  });
});

// ---- a tiny zip writer for the test (stored or deflated members) ----
function crc32(data: Uint8Array): number {
  let c = ~0;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function makeZip(members: { path: string; data: Uint8Array; deflate: boolean }[]): Uint8Array {
  const enc = new TextEncoder();
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const m of members) {
    const name = enc.encode(m.path);
    const body = m.deflate ? new Uint8Array(deflateRawSync(m.data)) : m.data;
    const crc = crc32(m.data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(8, m.deflate ? 8 : 0, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, body.length, true);
    local.setUint32(22, m.data.length, true);
    local.setUint16(26, name.length, true);
    locals.push(new Uint8Array(local.buffer), name, body);
    const central = new DataView(new ArrayBuffer(46));
    central.setUint32(0, 0x02014b50, true);
    central.setUint16(4, 20, true);
    central.setUint16(6, 20, true);
    central.setUint16(10, m.deflate ? 8 : 0, true);
    central.setUint32(16, crc, true);
    central.setUint32(20, body.length, true);
    central.setUint32(24, m.data.length, true);
    central.setUint16(28, name.length, true);
    central.setUint32(42, offset, true);
    centrals.push(new Uint8Array(central.buffer), name);
    offset += 30 + name.length + body.length;
  }
  const cdSize = centrals.reduce((n, b) => n + b.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, members.length, true);
  end.setUint16(10, members.length, true);
  end.setUint32(12, cdSize, true);
  end.setUint32(16, offset, true);
  const parts = [...locals, ...centrals, new Uint8Array(end.buffer)];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

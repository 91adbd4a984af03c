// The reading workflow (issue 18): analyse on drop, the DICOM preview and its window, the
// level caveat, errors apart from fractures, the study reader's keys and wheel, the chart to
// scale, the report and CSV downloads, and the history kept in the browser.
import { act, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { IDBFactory } from "fake-indexeddb";
import { describe, expect, it, vi } from "vitest";
import App from "./App";
import { HistoryStore } from "./lib/history";
import { CARD, PNG_B64, json, mockApi, pngFile, prediction, studyAnswer } from "./test/mockApi";

const setup = () => userEvent.setup({ applyAccept: false });
const LEVEL_CARD = {
  ...CARD,
  caveats: [
    "Level shortcut: in every series the fracture slices lie at the skull base to C2/C3 and the normal slices lower in the neck.",
  ],
};
const dicomFile = (name = "IM0001.dcm") => new File([new Uint8Array(300)], name, { type: "application/dicom" });

async function ready(props: Parameters<typeof App>[0] = {}) {
  const view = render(<App readyPollMs={20} history={null} {...props} />);
  await screen.findByText("Model ready");
  return view;
}

/** The text of every Blob handed to URL.createObjectURL (downloads), in order. */
function captureDownloads() {
  const blobs: Blob[] = [];
  const names: string[] = [];
  vi.spyOn(URL, "createObjectURL").mockImplementation((b: Blob | MediaSource) => {
    blobs.push(b as Blob);
    return `blob:download-${blobs.length}`;
  });
  vi.spyOn(HTMLAnchorElement.prototype, "click").mockImplementation(function (this: HTMLAnchorElement) {
    names.push(this.download);
  });
  return { blobs, names };
}

describe("analyse on drop", () => {
  it("analyses added files at once, and waits for a click when the setting is off", async () => {
    const fetchMock = mockApi({ predict: () => json(prediction(0.1)) });
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("a.png"));
    const a = screen.getByRole("article", { name: "a.png" });
    expect(await within(a).findByText("Normal")).toBeInTheDocument();
    expect(fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict"))).toHaveLength(1);

    await user.click(screen.getByRole("checkbox", { name: /analyse as soon as files are added/i }));
    expect(localStorage.getItem("cspine-triage.analyseOnDrop")).toBe("false");
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("b.png"));
    const b = screen.getByRole("article", { name: "b.png" });
    expect(within(b).getByText("Ready to analyse")).toBeInTheDocument();
    expect(fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict"))).toHaveLength(1);
  });
});

describe("DICOM", () => {
  it("shows the server's preview as the image, with header facts, and switches the window", async () => {
    const fetchMock = mockApi({
      predict: (url) =>
        json(
          prediction(0.1, 0.3, {
            preview_png_base64: url.searchParams.get("preview_window") === "soft_tissue" ? `${PNG_B64}#soft` : PNG_B64,
            dicom: { modality: "CT", slice_thickness_mm: 5, pixel_spacing_mm: [0.66, 0.66] },
          }),
        ),
    });
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), dicomFile());
    const card = screen.getByRole("article", { name: "IM0001.dcm" });
    const image = await within(card).findByRole("img", { name: "Preview of IM0001.dcm" });
    expect(image).toHaveAttribute("src", `data:image/png;base64,${PNG_B64}`);
    expect(within(card).getByText("Slice thickness").nextSibling).toHaveTextContent("5 mm");
    expect(within(card).getByText("Modality").nextSibling).toHaveTextContent("CT");
    // The first preview is the server's default window, the model's: it says so, and that preset is checked.
    expect(within(card).getByTestId("preview-window")).toHaveTextContent("model's window");
    expect(within(card).getByRole("radio", { name: "Model's window" })).toBeChecked();
    expect(within(card).getByRole("radio", { name: "Bone" })).not.toBeChecked();

    await user.click(within(card).getByRole("radio", { name: "Soft tissue" }));
    await waitFor(() =>
      expect(within(card).getByRole("img", { name: "Preview of IM0001.dcm" })).toHaveAttribute(
        "src",
        `data:image/png;base64,${PNG_B64}#soft`,
      ),
    );
    const windows = fetchMock.mock.calls.map(([u]) => String(u)).filter((u) => u.startsWith("/predict?"));
    expect(windows.at(-1)).toBe("/predict?explain=false&operating_point=sensitive&preview_window=soft_tissue");
    expect(within(card).getByRole("radio", { name: "Soft tissue" })).toBeChecked();
    expect(within(card).getByTestId("preview-window")).toHaveTextContent("soft-tissue window");

    await user.click(within(card).getByRole("radio", { name: "Bone" }));
    await waitFor(() => expect(within(card).getByTestId("preview-window")).toHaveTextContent("bone window"));
    const asked = fetchMock.mock.calls.map(([u]) => String(u)).filter((u) => u.startsWith("/predict?"));
    expect(asked.at(-1)).toBe("/predict?explain=false&operating_point=sensitive&preview_window=bone");
  });

  it("keeps the placeholder, and offers the image, when the answer has no preview", async () => {
    mockApi({ predict: () => json(prediction(0.1)) });
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), dicomFile());
    const card = screen.getByRole("article", { name: "IM0001.dcm" });
    await within(card).findByText("Normal");
    expect(within(card).queryByRole("img", { name: /preview of/i })).not.toBeInTheDocument();
    // Analysed: the placeholder no longer promises the image "once it is analysed".
    expect(within(card).queryByText(/once it is analysed/i)).not.toBeInTheDocument();
    expect(within(card).getByText(/choose a window below to show the image/i)).toBeInTheDocument();
    await user.click(within(card).getByRole("button", { name: "Show image" }));
    expect(await within(card).findByRole("alert")).toHaveTextContent(/sent no image/);
  });
});

describe("cards", () => {
  it("puts the level caveat on every positive card while the model card lists it", async () => {
    mockApi({
      model: () => json(LEVEL_CARD),
      batch: () => json({ results: [{ filename: "f.png", ...prediction(0.9) }, { filename: "n.png", ...prediction(0.1) }] }),
    });
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("f.png"), pngFile("n.png")]);
    const f = screen.getByRole("article", { name: "f.png" });
    const n = screen.getByRole("article", { name: "n.png" });
    expect(await within(f).findByTestId("level-caveat")).toHaveTextContent(/partly reads the vertebral level/);
    await within(n).findByText("Normal");
    expect(within(n).queryByTestId("level-caveat")).not.toBeInTheDocument();
  });

  it("tells an error from a fracture by colour class and by shape", async () => {
    mockApi({
      batch: () =>
        json({
          results: [
            { filename: "f.png", ...prediction(0.9) },
            { filename: "bad.txt", error: "not an image", status_code: 415 },
          ],
        }),
    });
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("f.png"), new File(["x"], "bad.txt")]);
    const table = await screen.findByTestId("batch-table");
    await waitFor(() => expect(within(table).getByText(/Error: Not an image/)).toBeInTheDocument());
    const error = within(table).getByText(/Error: Not an image/);
    const fracture = within(table).getByText("Potentially Fracture");
    expect(error).toHaveClass("dot-label--error");
    expect(fracture).toHaveClass("dot-label--positive");
    expect(error.querySelector("svg")).toHaveAttribute("data-shape", "error");
    expect(fracture.querySelector("svg")).toHaveAttribute("data-shape", "positive");
    expect(screen.getByRole("article", { name: "bad.txt" })).toHaveClass("card--error");
  });

  it("downloads a report of one slice and a CSV of the results", async () => {
    const fetchMock = mockApi({
      predict: () => json(prediction(0.9)),
      report: () => new Response("%PDF-1.4", { status: 200, headers: { "Content-Type": "application/pdf" } }),
    });
    const downloads = captureDownloads();
    const user = setup();
    await ready();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("c5.png"));
    const card = screen.getByRole("article", { name: "c5.png" });
    await within(card).findByText("Potentially Fracture");

    await user.click(within(card).getByRole("button", { name: /download a pdf report of c5.png/i }));
    expect(within(card).queryByText(/report not made/i)).not.toBeInTheDocument();
    await waitFor(() => expect(downloads.names).toEqual(["fracture-triage-report.pdf"]));
    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/report"))!;
    expect(String(call[0])).toBe("/report?operating_point=sensitive");
    expect(((call[1]!.body as FormData).getAll("files")[0] as File).name).toBe("c5.png");

    await user.click(screen.getByRole("button", { name: "Scores (CSV)" }));
    expect(downloads.names.at(-1)).toBe("slice-results.csv");
    expect(await downloads.blobs.at(-1)!.text()).toContain("c5.png,Potentially Fracture,0.9,0.3,sensitive,true,");
  });
});

describe("study reader", () => {
  const SERIES = [0.02, 0.05, 0.91, 0.97, 0.4, 0.03, 0.88];

  async function openStudy(answer = studyAnswer(SERIES)) {
    const fetchMock = mockApi({ study: () => json(answer), report: () => new Response("%PDF-1.4", { status: 200 }) });
    const user = setup();
    await ready({ initialMode: "study" });
    const files = SERIES.map((_, i) => pngFile(`neck (${i + 1}).png`));
    await user.upload(screen.getByLabelText(/select files or a \.zip/i), files);
    const viewer = await screen.findByTestId("study-viewer");
    return { user, viewer, fetchMock };
  }
  const heading = (viewer: HTMLElement) => within(viewer).getByRole("heading", { level: 2 }).textContent;

  it("analyses on drop and steps through slices with keys from anywhere in the reader", async () => {
    const { user, viewer } = await openStudy();
    expect(heading(viewer)).toBe("Slice 4 of 7"); // the top slice first
    const stage = within(viewer).getByRole("group", { name: /mouse wheel or arrow keys/i });
    stage.focus();
    await user.keyboard("{ArrowDown}");
    expect(heading(viewer)).toBe("Slice 5 of 7");
    await user.keyboard("{ArrowUp}{ArrowUp}");
    expect(heading(viewer)).toBe("Slice 3 of 7");
    await user.keyboard("{End}");
    expect(heading(viewer)).toBe("Slice 7 of 7");
    await user.keyboard("1");
    expect(heading(viewer)).toBe("Slice 4 of 7");
    await user.keyboard("2");
    expect(heading(viewer)).toBe("Slice 3 of 7");
    // a key pressed on another control of the reader (a button) moves too
    within(viewer).getByRole("button", { name: "Next slice" }).focus();
    await user.keyboard("{Home}");
    expect(heading(viewer)).toBe("Slice 1 of 7");
    // a click on a bar of the chart hands the keys to the viewer
    const chart = screen.getByRole("img", { name: /fracture probability of each slice/i });
    await user.click(within(chart).getAllByTestId("chart-bar")[5]!);
    expect(heading(viewer)).toBe("Slice 6 of 7");
    await user.keyboard("{ArrowDown}");
    expect(heading(viewer)).toBe("Slice 7 of 7");
    await user.keyboard("1");
    expect(heading(viewer)).toBe("Slice 4 of 7");
    // a form control keeps its own keys: the heatmap opacity slider is not a slice scrubber
    const opacity = await within(viewer).findByRole("slider", { name: "Heatmap opacity" });
    fireEvent.keyDown(opacity, { key: "End" });
    expect(heading(viewer)).toBe("Slice 4 of 7");
  });

  it("says which window the slice image is in", async () => {
    const { viewer } = await openStudy();
    await waitFor(() =>
      expect(within(viewer).getByTestId("viewer-window")).toHaveTextContent(/as the file holds it/i),
    );
  });

  it("steps with the mouse wheel over the viewer; Ctrl + wheel zooms instead", async () => {
    const { viewer } = await openStudy();
    expect(heading(viewer)).toBe("Slice 4 of 7");
    fireEvent.wheel(viewer, { deltaY: 100 });
    expect(heading(viewer)).toBe("Slice 5 of 7");
    fireEvent.wheel(viewer, { deltaY: -200 });
    expect(heading(viewer)).toBe("Slice 3 of 7");
    const stage = within(viewer).getByRole("group", { name: /mouse wheel or arrow keys/i });
    fireEvent.wheel(stage, { deltaY: -100, ctrlKey: true });
    expect(heading(viewer)).toBe("Slice 3 of 7");
    expect(within(viewer).getByTestId("sv-viewer-zoom")).toHaveTextContent("125%");
  });

  it("jumps to the top slices with buttons, and overlays the heatmap at an adjustable opacity", async () => {
    const { user, viewer } = await openStudy();
    await user.click(within(viewer).getByRole("button", { name: /^Top 2/ }));
    expect(heading(viewer)).toBe("Slice 3 of 7");
    const heat = within(viewer).getByRole("img", { name: "Grad-CAM heatmap overlaid on neck (3).png" });
    expect(within(viewer).getByTestId("sv-viewer-legend")).toHaveTextContent(
      "where the model looked — not a fracture outline",
    );
    await waitFor(() => expect(within(viewer).getByRole("img", { name: "Slice neck (3).png" })).toBeInTheDocument());
    const opacity = within(viewer).getByRole("slider", { name: "Heatmap opacity" });
    fireEvent.change(opacity, { target: { value: "20" } });
    expect(heat.style.opacity).toBe("0.2");
  });

  it("draws the chart to scale, in mm when the API says so", async () => {
    const answer = studyAnswer([0.1, 0.2, 0.9, 0.3]);
    answer.slices = answer.slices.map((s, i) => ({ ...s, position: [-10, -12.5, -15, -60][i]! }));
    const { viewer } = await openStudy({ ...answer, position_unit: "mm" });
    const chart = screen.getByRole("img", { name: /fracture probability of each slice/i });
    expect(within(chart).getByText("Position along the neck (mm)")).toBeInTheDocument();
    const xs = within(chart)
      .getAllByTestId("chart-bar")
      .map((g) => Number(g.querySelector(".chart__bar")!.getAttribute("x")));
    expect(xs[3]! - xs[2]!).toBeGreaterThan(10 * (xs[1]! - xs[0]!));
    expect(within(viewer).getByTestId("viewer-name")).toHaveTextContent("-15 mm");
  });

  it("labels the axis with slice numbers when the API sends no unit", async () => {
    await openStudy();
    const chart = screen.getByRole("img", { name: /fracture probability of each slice/i });
    expect(within(chart).getByText("Slice number")).toBeInTheDocument();
  });

  it("downloads the report of the series and a CSV of every slice", async () => {
    const { user, fetchMock } = await openStudy();
    const downloads = captureDownloads();
    await user.click(screen.getByRole("button", { name: "Download report (PDF)" }));
    await waitFor(() => expect(downloads.names).toEqual(["fracture-triage-report.pdf"]));
    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/report"))!;
    expect((call[1]!.body as FormData).getAll("files")).toHaveLength(SERIES.length);
    await user.click(screen.getByRole("button", { name: "Slice scores (CSV)" }));
    const text = await downloads.blobs.at(-1)!.text();
    expect(text.split("\r\n")).toHaveLength(SERIES.length + 2);
    expect(downloads.names.at(-1)).toBe("slice-scores.csv");
  });

  it("says the report needs the server in words when it fails", async () => {
    mockApi({ study: () => json(studyAnswer(SERIES)), report: () => json({ detail: "the model is not loaded yet" }, 503) });
    const user = setup();
    await ready({ initialMode: "study" });
    await user.upload(
      screen.getByLabelText(/select files or a \.zip/i),
      SERIES.map((_, i) => pngFile(`neck (${i + 1}).png`)),
    );
    await screen.findByTestId("study-viewer");
    await user.click(screen.getByRole("button", { name: "Download report (PDF)" }));
    expect(await screen.findByText(/Report not made: Server not ready/)).toBeInTheDocument();
  });
});

describe("history", () => {
  it("keeps one entry per file content, and the slices of one run as one group", async () => {
    const factory = new IDBFactory();
    const file = (name: string, n: number) => new File([new Uint8Array([137, 80, 78, 71, n])], name, { type: "image/png" });
    mockApi({
      predict: () => json(prediction(0.9)),
      batch: () => json({ results: [1, 2, 3].map((n) => ({ filename: `${n}.dcm`, ...prediction(0.1 * n) })) }),
    });
    const user = setup();
    await ready({ history: new HistoryStore(factory), analyseOnDrop: true });
    await user.upload(screen.getByLabelText(/choose files/i), file("c5.png", 9));
    await within(await screen.findByRole("article", { name: "c5.png" })).findByText("Potentially Fracture");
    await waitFor(() => expect(screen.getAllByTestId("history-entry")).toHaveLength(1));
    // The same content again, under another name: still one entry.
    await user.upload(screen.getByLabelText(/choose files/i), file("c5 copy.png", 9));
    await waitFor(() => expect(screen.getAllByTestId("slice-card")).toHaveLength(2));
    await waitFor(() => expect(screen.getAllByTestId("slice-result")).toHaveLength(2));
    await act(async () => {
      expect(await new HistoryStore(factory).list()).toHaveLength(1);
    });
    // Three files analysed together: one group of three.
    await user.upload(screen.getByLabelText(/choose files/i), [1, 2, 3].map((n) => file(`${n}.dcm`, n)));
    // Entries are saved as each file's hash is ready: the group grows to three.
    const group = await screen.findByTestId("history-group");
    await waitFor(() => expect(group).toHaveTextContent("3 slices analysed together"));
    expect(within(group).getAllByTestId("history-entry")).toHaveLength(3);
    await act(async () => {
      expect(await new HistoryStore(factory).list()).toHaveLength(4);
    });
  });

  it("keeps one entry for a study analysed again from the same files", async () => {
    const factory = new IDBFactory();
    mockApi({ study: () => json(studyAnswer([0.1, 0.9, 0.2])) });
    const user = setup();
    await ready({ history: new HistoryStore(factory) });
    await user.click(screen.getByRole("tab", { name: "Study (whole series)" }));
    const series = () => [1, 2, 3].map((n) => new File([new Uint8Array([137, 80, n])], `neck (${n}).png`, { type: "image/png" }));
    await user.upload(screen.getByLabelText(/select files or a \.zip/i), series());
    await waitFor(() => expect(screen.getAllByTestId("history-entry")).toHaveLength(1));
    await user.upload(screen.getByLabelText(/select files or a \.zip/i), series());
    await screen.findByTestId("study-viewer");
    await act(async () => {
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await new HistoryStore(factory).list()).toHaveLength(1);
    });
  });


  it("reopens the last results after a reload, and clears them", async () => {
    const factory = new IDBFactory();
    mockApi({ predict: () => json(prediction(0.9)), study: () => json(studyAnswer([0.1, 0.9, 0.2])) });
    const user = setup();
    const first = await ready({ history: new HistoryStore(factory) });
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("c5.png"));
    // the card's verdict (the history panel may list it too by now)
    const answered = await screen.findByRole("article", { name: "c5.png" });
    await within(answered).findByText("Potentially Fracture");
    await user.click(screen.getByRole("tab", { name: "Study (whole series)" }));
    await user.upload(
      screen.getByLabelText(/select files or a \.zip/i),
      [1, 2, 3].map((n) => pngFile(`neck (${n}).png`)),
    );
    await screen.findByTestId("study-viewer");
    await waitFor(() => expect(screen.getAllByTestId("history-entry")).toHaveLength(2));
    first.unmount();

    // "reload": a new page over the same IndexedDB
    await ready({ history: new HistoryStore(factory) });
    const panel = await screen.findByRole("region", { name: "Recent results" });
    await waitFor(() => expect(within(panel).getAllByTestId("history-entry")).toHaveLength(2));
    await user.click(within(panel).getByRole("button", { name: "Open c5.png (slice)" }));
    const card = await screen.findByRole("article", { name: "c5.png" });
    expect(within(card).getByTestId("result-label")).toHaveTextContent("Potentially Fracture");
    expect(within(card).getByRole("img", { name: "Preview of c5.png" })).toBeInTheDocument(); // the file was kept

    await user.click(within(panel).getByRole("button", { name: /Open 3 files \(study\)/ }));
    expect(await screen.findByTestId("study-result")).toHaveTextContent("Potentially Fracture");
    expect(screen.getByRole("button", { name: "Download report (PDF)" })).toBeDisabled();
    expect(screen.getByText(/add the files again for a report/)).toBeInTheDocument();

    await user.click(within(panel).getByRole("button", { name: "Clear history" }));
    await waitFor(() => expect(screen.queryByRole("region", { name: "Recent results" })).not.toBeInTheDocument());
    await act(async () => {
      expect(await new HistoryStore(factory).list()).toEqual([]);
    });
  });
});

import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";
import App from "./App";
import { CARD, json, mockApi, pngFile, prediction } from "./test/mockApi";

const setup = () => userEvent.setup({ applyAccept: false });

async function renderReady() {
  render(<App readyPollMs={20} analyseOnDrop={false} history={null} />);
  await screen.findByText("Model ready");
}

describe("upload flow", () => {
  it("uploads a slice, shows loading, then label, probability, threshold and model", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const fetchMock = mockApi({
      predict: async () => {
        await gate;
        return json(prediction(0.82));
      },
    });
    const user = setup();
    await renderReady();

    await user.upload(screen.getByLabelText(/choose files/i), pngFile("c5.png"));
    const card = screen.getByRole("article", { name: "c5.png" });
    expect(within(card).getByRole("img", { name: /preview of c5.png/i })).toBeInTheDocument();
    expect(within(card).getByText("Ready to analyse")).toBeInTheDocument();

    await user.click(screen.getByRole("button", { name: "Analyse" }));
    expect(within(card).getByText("Analysing…")).toBeInTheDocument();
    expect(screen.getByTestId("analyse-button")).toBeDisabled();

    release();
    expect(await within(card).findByText("Potentially Fracture")).toBeInTheDocument();
    expect(within(card).getByTestId("probability")).toHaveTextContent("82%");
    const meter = within(card).getByRole("meter", { name: "Fracture probability" });
    expect(meter).toHaveAttribute("aria-valuenow", "82");
    expect(meter.getAttribute("aria-valuetext")).toMatch(/above the sensitive threshold of 30%/);
    expect(within(card).getByText("threshold 30%")).toBeInTheDocument();
    expect(within(card).getByTestId("model-name")).toHaveTextContent("custom-cnn v1.2.0");
    expect(within(card).getByTestId("result-label")).toHaveClass("badge--positive");

    const call = fetchMock.mock.calls.find(([u]) => String(u).startsWith("/predict"))!;
    expect(String(call[0])).toBe("/predict?explain=true&operating_point=sensitive");
    const body = call[1]!.body as FormData;
    expect((body.get("file") as File).name).toBe("c5.png");
  });

  it("renders Normal calmly and an unknown result neutrally", async () => {
    mockApi({
      batch: () =>
        json({
          results: [
            { filename: "a.png", ...prediction(0.1) },
            { filename: "b.png", ...prediction(0.05, 0.3, { result: "Not a CT slice", in_distribution: false }) },
          ],
        }),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("a.png"), pngFile("b.png")]);
    await user.click(screen.getByRole("button", { name: "Analyse 2 slices" }));
    const a = screen.getByRole("article", { name: "a.png" });
    const b = screen.getByRole("article", { name: "b.png" });
    expect(await within(a).findByTestId("result-label")).toHaveClass("badge--negative");
    expect(within(a).getByTestId("result-label")).toHaveTextContent("Normal");
    expect(within(b).getByTestId("result-label")).toHaveTextContent("Not a CT slice");
    expect(within(b).getByTestId("result-label")).toHaveClass("badge--neutral");
  });

  it("tells CT it cannot judge apart from non-CT: its own badge, the reason and what to send", async () => {
    mockApi({
      predict: () =>
        json(
          prediction(0.7, 0.3, {
            result: "CT outside the model's range",
            in_distribution: false,
            outside_reason: "window",
          }),
        ),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("bone-window.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "bone-window.png" });
    const badge = await within(card).findByTestId("result-label");
    expect(badge).toHaveTextContent("CT outside the model's range");
    expect(badge).toHaveClass("badge--outside");
    expect(badge.querySelector("svg")).toHaveAttribute("data-shape", "outside");
    expect(within(card).getByTestId("refusal")).toHaveTextContent(/exported in a window the model cannot judge.*Send the DICOM/);
    expect(within(card).queryByTestId("refusal-advice")).not.toBeInTheDocument();
    expect(within(card).queryByRole("meter")).not.toBeInTheDocument();
    expect(card).not.toHaveTextContent("70%");
  });

  it("refuses a non-CT image in plain words, with what to do instead, and shows no score", async () => {
    mockApi({
      predict: () =>
        json(prediction(0.95, 0.3, { result: "Not a CT slice", in_distribution: false, ct_gate_margin: 2.26 })),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("cat.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "cat.png" });
    const badge = await within(card).findByTestId("result-label");
    expect(badge).toHaveTextContent("Not a CT slice");
    expect(badge).toHaveClass("badge--neutral");
    expect(card).toHaveClass("card--neutral");
    expect(within(card).getByTestId("refusal")).toHaveTextContent(
      "This image does not look like an axial CT slice of the neck, so no fracture call was made",
    );
    expect(within(card).getByTestId("refusal-advice")).toHaveTextContent(/Send the axial neck slice itself/);
    // No verdict bar, no heatmap, no score, no gate number: none of them means anything here.
    expect(within(card).queryByRole("meter")).not.toBeInTheDocument();
    expect(within(card).queryByText(/threshold 30%/)).not.toBeInTheDocument();
    expect(card).not.toHaveTextContent("95%");
    expect(card).not.toHaveTextContent("2.26");
    expect(card).not.toHaveTextContent(/margin|distribution/i);
    expect(within(card).queryByRole("switch", { name: /grad-cam heatmap/i })).not.toBeInTheDocument();
    expect(within(card).queryByTestId("heatmap-image")).not.toBeInTheDocument();
    expect(screen.getByTestId("announcer")).toHaveTextContent("1 not a CT slice");
  });

  it("counts refused images on their own in the batch summary", async () => {
    mockApi({
      batch: () =>
        json({
          results: [
            { filename: "n.png", ...prediction(0.12) },
            { filename: "cat.jpg", ...prediction(0.97, 0.3, { result: "Not a CT slice", in_distribution: false, ct_gate_margin: 5.1 }) },
            { filename: "f.png", ...prediction(0.91) },
          ],
        }),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("n.png"), pngFile("cat.jpg"), pngFile("f.png")]);
    await user.click(screen.getByRole("button", { name: "Analyse 3 slices" }));
    const table = await screen.findByRole("table", { name: /results for each file/i });
    await waitFor(() => expect(within(table).getAllByText(/Potentially Fracture|Normal|Not a CT slice/)).toHaveLength(3));
    const counts = screen.getByTestId("batch-counts");
    expect(counts).toHaveTextContent("3 analysed");
    expect(counts).toHaveTextContent("1 potentially fracture");
    expect(within(counts).getByTestId("count-refused")).toHaveTextContent("1 not a CT slice");
    // Fractures first; the refused image's high score does not rank it as one.
    const rows = within(table).getAllByRole("row").slice(1);
    expect(rows.map((r) => within(r).getByRole("rowheader").textContent)).toEqual(["f.png", "cat.jpg", "n.png"]);
    expect(rows[1]).toHaveTextContent("not scored");
    expect(rows[1]).not.toHaveTextContent("97%");
    expect(within(rows[1]!).getByText("Not a CT slice")).toHaveClass("dot-label--neutral");
  });

  it("shows a DICOM placeholder instead of a preview", async () => {
    mockApi();
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), new File([new Uint8Array(200)], "IM0001.dcm"));
    const card = screen.getByRole("article", { name: "IM0001.dcm" });
    expect(within(card).queryByRole("img")).not.toBeInTheDocument();
    expect(within(card).getByText(/the server decodes DICOM/i)).toBeInTheDocument();
  });

  it("re-analyses at the other operating point when it is changed", async () => {
    const fetchMock = mockApi({
      predict: (url) => json(prediction(0.5, url.searchParams.get("operating_point") === "specific" ? 0.7 : 0.3)),
    });
    const user = setup();
    await renderReady();
    expect(await screen.findByText(/threshold 70%/)).toBeInTheDocument(); // from the model card
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("x.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "x.png" });
    expect(await within(card).findByText("Potentially Fracture")).toBeInTheDocument();

    await user.click(screen.getByRole("radio", { name: /specific/i }));
    expect(await within(card).findByText("Normal")).toBeInTheDocument();
    const urls = fetchMock.mock.calls.map(([u]) => String(u)).filter((u) => u.startsWith("/predict"));
    expect(urls.at(-1)).toContain("operating_point=specific");
  });
});

describe("error rendering", () => {
  it.each([
    [415, "Unsupported media type: text/plain", "Not an image"],
    [413, "File exceeds 10 MB", "File too large"],
    [503, "Model not loaded", "Server not ready"],
    [400, "Could not decode image", "Image could not be read"],
  ])("HTTP %i is explained in words next to the file", async (status, detail, title) => {
    mockApi({ predict: () => json({ detail }, status) });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), new File(["hello"], "notes.txt", { type: "text/plain" }));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "notes.txt" });
    const alert = await within(card).findByRole("alert");
    expect(alert).toHaveTextContent(title);
    expect(alert).toHaveTextContent(detail);
    expect(within(card).queryByTestId("slice-result")).not.toBeInTheDocument();
  });

  it("explains an unreachable server instead of a blank screen", async () => {
    const fetchMock = mockApi();
    fetchMock.mockImplementation(async () => {
      throw new TypeError("Failed to fetch");
    });
    const user = setup();
    render(<App readyPollMs={20} analyseOnDrop={false} history={null} />);
    expect(await screen.findByText("Server unreachable")).toBeInTheDocument();
    expect(await screen.findByText(/model card unavailable/i)).toBeInTheDocument();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("a.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "a.png" });
    expect(await within(card).findByRole("alert")).toHaveTextContent("Server unreachable");
  });

  it("shows the model loading while /ready answers 503", async () => {
    mockApi({ ready: () => json({ detail: "loading" }, 503) });
    render(<App readyPollMs={20} analyseOnDrop={false} history={null} />);
    expect(await screen.findByText("Model loading…")).toBeInTheDocument();
    expect(screen.getByText(/still loading/)).toBeInTheDocument();
  });
});

describe("heatmap toggle", () => {
  it("swaps the preview for the Grad-CAM overlay and back", async () => {
    mockApi({ predict: () => json(prediction(0.9)) });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("h.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "h.png" });
    const toggle = await within(card).findByRole("switch", { name: /grad-cam heatmap/i });
    expect(toggle).toHaveAttribute("aria-checked", "false");
    expect(within(card).getByTestId("preview-image")).toBeInTheDocument();

    await user.click(toggle);
    expect(toggle).toHaveAttribute("aria-checked", "true");
    const heat = within(card).getByRole("img", { name: /grad-cam heatmap overlaid on h.png/i });
    expect(heat.getAttribute("src")).toMatch(/^data:image\/png;base64,iVBOR/);

    toggle.focus();
    await user.keyboard(" ");
    expect(toggle).toHaveAttribute("aria-checked", "false");
    expect(within(card).getByTestId("preview-image")).toBeInTheDocument();
  });

  it("fetches the heatmap on demand for batch results, which carry none", async () => {
    const fetchMock = mockApi({
      batch: () =>
        json({
          results: [
            { filename: "a.png", ...prediction(0.9, 0.3, { heatmap_png_base64: undefined }) },
            { filename: "b.png", ...prediction(0.1, 0.3, { heatmap_png_base64: undefined }) },
          ],
        }),
      predict: (url, init) => {
        expect(((init!.body as FormData).get("file") as File).name).toBe("a.png");
        expect(url.searchParams.get("explain")).toBe("true");
        return json(prediction(0.9));
      },
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("a.png"), pngFile("b.png")]);
    await user.click(screen.getByRole("button", { name: "Analyse 2 slices" }));
    const card = screen.getByRole("article", { name: "a.png" });
    const toggle = await within(card).findByRole("switch", { name: /grad-cam heatmap/i });
    expect(within(card).queryByTestId("heatmap-image")).not.toBeInTheDocument();
    await user.click(toggle);
    expect(await within(card).findByRole("img", { name: /grad-cam heatmap overlaid/i })).toBeInTheDocument();
    expect(fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict?explain=true"))).toHaveLength(1);
    // Toggling off and on again reuses the fetched heatmap.
    await user.click(toggle);
    await user.click(toggle);
    expect(fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict?explain=true"))).toHaveLength(1);
  });

  it("says so when the heatmap cannot be produced", async () => {
    let calls = 0;
    mockApi({
      predict: () =>
        calls++ > 0
          ? json({ detail: "the model is not loaded yet" }, 503)
          : json(prediction(0.9, 0.3, { heatmap_png_base64: undefined })),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), pngFile("h.png"));
    await user.click(screen.getByRole("button", { name: "Analyse" }));
    const card = screen.getByRole("article", { name: "h.png" });
    await user.click(await within(card).findByRole("switch", { name: /grad-cam heatmap/i }));
    expect(await within(card).findByText(/heatmap unavailable: server not ready/i)).toBeInTheDocument();
    expect(within(card).getByRole("switch")).toHaveAttribute("aria-checked", "false");
  });
});

describe("batch table", () => {
  it("sends several files to /predict/batch and lists them, fractures first, errors per file", async () => {
    const fetchMock = mockApi({
      batch: () =>
        json({
          results: [
            { filename: "n.png", ...prediction(0.12) },
            { filename: "bad.txt", error: "the file is not a recognised image or DICOM", status_code: 415 },
            { filename: "f.png", ...prediction(0.91) },
          ],
        }),
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), [
      pngFile("n.png"),
      new File(["x"], "bad.txt", { type: "text/plain" }),
      pngFile("f.png"),
    ]);
    await user.click(screen.getByRole("button", { name: "Analyse 3 slices" }));

    const table = await screen.findByRole("table", { name: /results for each file/i });
    await waitFor(() => expect(within(table).getAllByText(/Potentially Fracture|Normal|Not an image/)).toHaveLength(3));
    const rows = within(table).getAllByRole("row").slice(1);
    expect(rows.map((r) => within(r).getByRole("rowheader").textContent)).toEqual(["f.png", "n.png", "bad.txt"]);
    expect(rows[0]).toHaveTextContent("91%");
    expect(rows[2]).toHaveTextContent("Not an image");
    expect(screen.getByTestId("batch-counts")).toHaveTextContent("2 analysed");
    expect(screen.getByTestId("batch-counts")).toHaveTextContent("1 potentially fracture");
    expect(screen.getByTestId("batch-counts")).toHaveTextContent("1 failed");

    const bad = screen.getByRole("article", { name: "bad.txt" });
    expect(within(bad).getByRole("alert")).toHaveTextContent("Not an image");
    expect(within(bad).getByRole("alert")).toHaveTextContent("the file is not a recognised image or DICOM");

    const posts = fetchMock.mock.calls.filter(([u]) => String(u).startsWith("/predict"));
    expect(posts).toHaveLength(1);
    expect(String(posts[0]![0])).toMatch(/^\/predict\/batch\?/);
    expect((posts[0]![1]!.body as FormData).getAll("files")).toHaveLength(3);
  });

  it("falls back to one request per file when the batch is refused as too large", async () => {
    mockApi({
      batch: () => json({ detail: "request too large" }, 413),
      predict: async (_url, init) => {
        const file = (init!.body as FormData).get("file") as File;
        return file.name === "huge.png" ? json({ detail: "File exceeds 10 MB" }, 413) : json(prediction(0.2));
      },
    });
    const user = setup();
    await renderReady();
    await user.upload(screen.getByLabelText(/choose files/i), [pngFile("ok.png"), pngFile("huge.png")]);
    await user.click(screen.getByRole("button", { name: "Analyse 2 slices" }));
    const huge = screen.getByRole("article", { name: "huge.png" });
    expect(await within(huge).findByRole("alert")).toHaveTextContent("File too large");
    const ok = screen.getByRole("article", { name: "ok.png" });
    expect(await within(ok).findByText("Normal")).toBeInTheDocument();
  });
});

describe("model panel", () => {
  it("starts at the model card's default operating point", async () => {
    mockApi({ model: () => json({ ...CARD, default_operating_point: "specific" }) });
    await renderReady();
    await waitFor(() => expect(screen.getByRole("radio", { name: /specific/i })).toBeChecked());
  });


  it("shows the model card: identity, intended use, operating points, metrics, confusion matrix, caveats", async () => {
    mockApi();
    await renderReady();
    const panel = screen.getByRole("complementary", { name: "Model" });
    expect(await within(panel).findByTestId("model-card-name")).toHaveTextContent("custom-cnn");
    expect(within(panel).getByText(/Version 1.2.0/)).toBeInTheDocument();
    expect(within(panel).getByText(/decision support, not a diagnosis/i)).toBeInTheDocument();
    expect(within(panel).getByText(CARD.intended_use as string)).toBeInTheDocument();
    // New-patient numbers lead: a row per held-out series, intervals in brackets.
    const newPatients = within(panel).getByTestId("new-patient-table");
    expect(within(newPatients).getByRole("rowheader", { name: "SERIES_A (held out)" })).toBeInTheDocument();
    expect(within(newPatients).getByText("0.812 [0.700–0.910]")).toBeInTheDocument();
    const points = within(panel).getByTestId("operating-points");
    expect(within(points).getByRole("columnheader", { name: "Sensitive" })).toBeInTheDocument();
    expect(within(points).getByRole("rowheader", { name: "Threshold" })).toBeInTheDocument();
    expect(within(points).getByText("0.700")).toBeInTheDocument();
    const validation = within(panel).getByTestId("metrics-validation");
    expect(within(validation).getByText("Validation set · 700 images")).toBeInTheDocument();
    expect(within(validation).getByText("ROC AUC")).toBeInTheDocument();
    expect(within(validation).getByText("Sensitivity (recall)")).toBeInTheDocument();
    // Training-set metrics are there, but folded away below the held-out ones.
    expect(within(panel).getByText(/Train set · 2,100 images/).closest("details")).not.toHaveAttribute("open");
    expect(within(panel).getByText("Axial cervical-spine CT slices.")).toBeInTheDocument();
    const cm = within(validation).getByTestId("confusion-matrix");
    expect(within(cm).getByText("238")).toBeInTheDocument();
    expect(within(cm).getByText("missed fracture")).toBeInTheDocument();
    expect(within(panel).getByText("Not validated on paediatric patients.")).toBeInTheDocument();
  });

  it("labels the archive val split as what it is: a patient the model was trained on, apart from the new ones", async () => {
    const test = {
      data: "../shared/data/cervical-ct/val",
      base_slices: { fracture: 10, normal: 10 },
      model: { auc: 1, recall: 1, specificity: 0.845 },
      product: { recall: 1, specificity: 0.845 },
      refused: 0,
    };
    mockApi({ model: () => json({ ...CARD, test }) });
    await renderReady();
    const panel = screen.getByRole("complementary", { name: "Model" });
    const table = await within(panel).findByTestId("new-patient-table");
    const apart = within(table).getByTestId("test-split-row");
    expect(apart).toHaveTextContent("Not a new patient");
    expect(
      within(apart).getByRole("rowheader", { name: /Archive val split: series B10, which was in training/ }),
    ).toBeInTheDocument();
    expect(within(table).queryByText(/Archive val split \(test\)/)).not.toBeInTheDocument();
  });

  it("opens the full model card in a dialog that scrolls, not in the panel", async () => {
    const user = userEvent.setup();
    mockApi();
    await renderReady();
    const panel = screen.getByRole("complementary", { name: "Model" });
    await within(panel).findByTestId("model-card-name");
    expect(within(panel).queryByText("All model card fields")).not.toBeInTheDocument();
    const dialog = screen.getByTestId("full-card-dialog");
    expect(within(dialog).queryByText("gradcam_conv")).not.toBeInTheDocument(); // drawn on opening
    await user.click(within(panel).getByRole("button", { name: "The full model card" }));
    expect(dialog).toHaveAttribute("open");
    expect(await within(dialog).findByText("gradcam_conv")).toBeInTheDocument();
    expect(within(dialog).getByTestId("full-card-body")).toHaveClass("card-dialog__body");
    await user.click(within(dialog).getByRole("button", { name: "Close the model card" }));
    expect(dialog).not.toHaveAttribute("open");
  });
});

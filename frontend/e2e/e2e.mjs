// End-to-end test in headless Chromium against the REAL backend and the REAL default model.
//
//   node e2e/e2e.mjs            (needs frontend/dist built, the repo's .venv, Debian chromium)
//
// Starts `uvicorn backend.app.main:app` on a free port from the repo root (it serves
// frontend/dist at /), waits for /ready, drives the page like a user, saves screenshots
// under <repo>/test-output/frontend-e2e/ and stops the server at the end.
// Fails on any page error, console error or Content-Security-Policy violation: the page runs
// under the CSP the backend sends (script-src 'self'; style-src 'self').
// Also: the reading workflow (viewer, DICOM preview, study keys and wheel, PDF reports read with
// the venv's pypdf, CSVs, the IndexedDB history across a reload) and /docs + /redoc with every
// request to a host other than 127.0.0.1 aborted.
// The worklist: two studies saved through POST /predict/study?save=true (one while the Worklist
// view is open: it appears by polling), the flagged one first, a read recorded with the keyboard
// (D), Monitoring counting it, and the entry and its read still there after a backend restart on
// the same SQLite file (a fresh temporary WORKLIST_SQLITE_PATH; DATABASE_URL is never passed on).
// Env: CHROMIUM_PATH (default /usr/bin/chromium), PYTHON (default <repo>/.venv/bin/python),
//      E2E_READY_TIMEOUT_S (default 300), MODEL_DIR (passed through to the backend),
//      E2E_CT_DIR (default ../shared/data/cervical-ct/train; a synthetic PNG is used when absent).
import { spawn, spawnSync } from "node:child_process";
import {
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { assert, checkAccessibility, CHROMIUM, cspViolations, launchChromium, log, ok, UI_TIMEOUT, watchPage } from "./browser.mjs";

const FRONTEND = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = resolve(FRONTEND, "..");
const DIST = join(FRONTEND, "dist");
const OUT = join(ROOT, "test-output", "frontend-e2e");
// The README's picture, taken here from the running product (only with real CT slices).
const README_SCREENSHOT = join(ROOT, "docs", "screenshot.png");
const CT_DIR = process.env.E2E_CT_DIR ?? join(ROOT, "..", "shared", "data", "cervical-ct", "train");
const PYTHON = process.env.PYTHON ?? join(ROOT, ".venv", "bin", "python");
const READY_TIMEOUT_S = Number(process.env.E2E_READY_TIMEOUT_S ?? 300);


function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

// ---- a synthetic CT-like PNG, used only when the shared data set is absent ----
function crc32(buf) {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

function syntheticSlicePng(size = 224, lineAt = 6) {
  const raw = Buffer.alloc((size + 1) * size);
  const c = size / 2;
  for (let y = 0; y < size; y++) {
    raw[y * (size + 1)] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      const r = Math.hypot(x - c, (y - c) * 1.2);
      let v = r < 95 ? 70 : 10; // soft tissue disc on air
      if (r > 28 && r < 40) v = 235; // vertebral body cortex
      if (r <= 28) v = 150; // cancellous bone
      if (Math.abs(x - c - lineAt) < 2 && r < 40) v = 60; // a "fracture line"
      raw[y * (size + 1) + 1 + x] = v;
    }
  }
  return png(size, size, 0, raw);
}

function png(width, height, colorType, raw) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = colorType; // 0 gray, 2 RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** A colourful synthetic landscape (sky, sun, house, striped field): nothing like a CT slice. */
function syntheticPhotoPng(w = 320, h = 240) {
  const row = w * 3 + 1;
  const raw = Buffer.alloc(row * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = y * row + 1 + x * 3;
      const sky = y < h * 0.55;
      let rgb = sky
        ? [90 + y * 0.4, 150 + y * 0.3, 230]
        : [60 + 40 * Math.sin(x / 9), 140 + 30 * Math.sin((x + y) / 7), 50];
      if (Math.hypot(x - w * 0.75, y - h * 0.2) < 28) rgb = [255, 210, 60];
      const hy = y - h * 0.35;
      if (hy > 0 && hy < 70 && Math.abs(x - w * 0.3) < 45 - hy * 0.1) rgb = [200, 60 + hy, 50];
      raw.set(rgb.map(Math.round), o);
    }
  }
  return png(w, h, 2, raw);
}

/** A natural photo: scikit-image's chelsea() (the cat) when the venv has it, else a synthetic one. */
function naturalPhoto() {
  const file = join(OUT, "photo-chelsea.png");
  const made = spawnSync(
    PYTHON,
    ["-c", "import sys; from skimage import data; from PIL import Image; Image.fromarray(data.chelsea()).save(sys.argv[1])", file],
    { encoding: "utf-8" },
  );
  if (made.status === 0 && existsSync(file)) return { name: "chelsea.png", mimeType: "image/png", buffer: readFileSync(file) };
  log("scikit-image not available: using a synthetic photo");
  return { name: "landscape.png", mimeType: "image/png", buffer: syntheticPhotoPng() };
}

function pickSlices() {
  const pick = (sub) => {
    const dir = join(CT_DIR, sub);
    if (!existsSync(dir)) return [];
    return readdirSync(dir)
      .filter((f) => /\.(png|jpe?g)$/i.test(f))
      .sort()
      .map((f) => join(dir, f));
  };
  const fracture = pick("fracture");
  const normal = pick("normal");
  if (fracture.length) {
    log(`using real CT slices from ${CT_DIR}`);
    return { real: true, first: fracture[0], second: normal[0] ?? fracture[1] ?? fracture[0] };
  }
  log(`no data set at ${CT_DIR}: using a synthetic PNG slice`);
  const file = { name: "synthetic-slice.png", mimeType: "image/png", buffer: syntheticSlicePng() };
  return { real: false, first: file, second: { ...file, name: "synthetic-slice-2.png" } };
}

const asPayload = (file) =>
  typeof file === "string"
    ? { name: file.split("/").pop(), mimeType: /\.png$/i.test(file) ? "image/png" : "image/jpeg", buffer: readFileSync(file) }
    : file;

/** The number in a Kaggle file name, "… (12).png" → 12. */
const number = (f) => Number(/\((\d+)\)/.exec(f)[1]);

/** The original (un-augmented) slices `SERIES (N).png` of the data set's largest series in `sub`, in order. */
function largestSeries(sub) {
  const path = join(CT_DIR, sub);
  if (!existsSync(path)) return [];
  const groups = new Map();
  for (const f of readdirSync(path).filter((f) => /^[A-Za-z0-9]+ \(\d+\)\.png$/.test(f))) {
    const series = f.split(" (")[0];
    groups.set(series, [...(groups.get(series) ?? []), f]);
  }
  const best = [...groups.values()].sort((a, b) => b.length - a.length)[0] ?? [];
  return best.sort((a, b) => number(a) - number(b)).map((f) => join(path, f));
}

/**
 * One series for study mode, as a folder under test-output: the original (un-augmented)
 * slices of the largest fracture series and of the largest normal series of the shared
 * data set, named `SERIES (N).png` as the backend orders them, then (when given) the photo
 * numbered after them as a slice the CT gate refuses. Synthetic numbered slices when the
 * data set is absent.
 */
function buildSeries(photo) {
  const dir = join(OUT, "series");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const fracture = largestSeries("fracture");
  const normal = largestSeries("normal").slice(0, 12);
  let names = [];
  const real = fracture.length > 0 && normal.length > 0;
  if (real) {
    for (const file of [...fracture, ...normal]) {
      const name = file.split("/").pop();
      copyFileSync(file, join(dir, name));
      names.push(name);
    }
  } else {
    for (let i = 1; i <= 10; i++) {
      const name = `synthetic (${i}).png`;
      writeFileSync(join(dir, name), syntheticSlicePng(224, i * 3 - 15));
      names.push(name);
    }
  }
  let photoName = null;
  if (photo) {
    photoName = `photo (${Math.max(...names.map(number)) + 20}).png`;
    writeFileSync(join(dir, photoName), photo.buffer);
    names.push(photoName);
  }
  return { dir, real, count: names.length, photoName };
}

/** pydicom's MIT-licensed CT_small.dcm, as `make samples` writes it (written here when absent). */
function sampleDicom() {
  let file = join(ROOT, "samples", "CT_small.dcm");
  if (!existsSync(file)) {
    const made = spawnSync(PYTHON, [join(ROOT, "scripts", "make_samples.py"), "--out", join(OUT, "samples")], {
      encoding: "utf-8",
    });
    assert(made.status === 0, `make_samples.py failed: ${made.stderr}`);
    file = join(OUT, "samples", "CT_small.dcm");
  }
  return { name: "CT_small.dcm", mimeType: "application/dicom", buffer: readFileSync(file) };
}

/** The text of a PDF, read with pypdf (a dev requirement) in the repo's venv. */
function pdfText(file) {
  const read = spawnSync(
    PYTHON,
    ["-c", "import sys; from pypdf import PdfReader; print(' '.join(p.extract_text() or '' for p in PdfReader(sys.argv[1]).pages))", file],
    { encoding: "utf-8" },
  );
  assert(read.status === 0, `pypdf could not read ${file}: ${read.stderr}`);
  return read.stdout.replace(/\s+/g, " ");
}

/** Saves the download `click()` starts under OUT as `name`; returns its path. */
async function download(page, click, name) {
  const [file] = await Promise.all([page.waitForEvent("download", { timeout: UI_TIMEOUT }), click()]);
  const path = join(OUT, name);
  await file.saveAs(path);
  return path;
}

async function apiPredict(base, file) {
  const form = new FormData();
  form.append("file", new Blob([file.buffer], { type: file.mimeType }), file.name);
  const res = await fetch(`${base}/predict`, { method: "POST", body: form });
  assert(res.ok, `/predict answered ${res.status} for ${file.name}`);
  return res.json();
}

// ---- the real backend ----
async function startBackend(port, { modelDir, logName = "server.log", worklistDb } = {}) {
  assert(existsSync(PYTHON), `no Python at ${PYTHON}: run \`make venv\``);
  const logFile = join(OUT, logName);
  const out = createWriteStream(logFile);
  // Never the checkout's worklist.sqlite3 (nor a DATABASE_URL from the caller's environment).
  const { DATABASE_URL: _unused, ...env } = process.env;
  const db = worklistDb ?? join(mkdtempSync(join(tmpdir(), "e2e-worklist-")), "worklist.sqlite3");
  const proc = spawn(
    PYTHON,
    ["-m", "uvicorn", "backend.app.main:app", "--host", "127.0.0.1", "--port", String(port)],
    {
      cwd: ROOT,
      detached: true, // own process group, so the whole tree can be stopped
      env: {
        ...env,
        WORKLIST_SQLITE_PATH: db,
        ...(modelDir ? { MODEL_DIR: modelDir } : {}),
        FRONTEND_DIST: DIST,
        TF_CPP_MIN_LOG_LEVEL: "2",
        PYTHONUNBUFFERED: "1",
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  // Whatever happens to this script (crash, Ctrl-C), the server's process group goes with it.
  const killGroup = () => {
    try {
      process.kill(-proc.pid, "SIGKILL");
    } catch {
      // already gone
    }
  };
  process.on("exit", killGroup);
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, () => {
      killGroup();
      process.exit(130);
    });
  }
  proc.stdout.pipe(out);
  proc.stderr.pipe(out);
  let exited = null;
  proc.on("exit", (code, signal) => (exited = { code, signal }));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + READY_TIMEOUT_S * 1000;
  log(`started backend (pid ${proc.pid}) on ${base}; waiting for /ready (log: ${logFile})`);
  for (;;) {
    if (exited) throw new Error(`backend exited early (${JSON.stringify(exited)}); see ${logFile}`);
    try {
      const res = await fetch(`${base}/ready`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`backend not ready after ${READY_TIMEOUT_S}s; see ${logFile}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  return { proc, base, worklistDb: db, isAlive: () => !exited };
}

async function stopBackend(server) {
  if (!server || !server.isAlive()) return;
  const group = -server.proc.pid;
  try {
    process.kill(group, "SIGTERM");
  } catch {
    return;
  }
  for (let i = 0; i < 50 && server.isAlive(); i++) await new Promise((r) => setTimeout(r, 100));
  if (server.isAlive()) {
    try {
      process.kill(group, "SIGKILL");
    } catch {
      // already gone
    }
  }
  log("backend stopped");
}

// ---- accessibility: axe-core over the page with results, errors and the model card on it ----
// ---- the scenario ----
async function scenario(page, base, photo) {
  const slices = pickSlices();
  const card = (name) => page.locator("article", { has: page.getByRole("heading", { name, exact: true }) });
  const nameOf = (f) => (typeof f === "string" ? f.split("/").pop() : f.name);

  const home = await page.goto(base);
  const csp = home.headers()["content-security-policy"] ?? "";
  assert(/script-src 'self'(;|$)/.test(csp) && /style-src 'self'(;|$)/.test(csp), `strict CSP on the page, got "${csp}"`);
  await page.getByRole("heading", { name: "C-Spine CT Fracture Triage" }).waitFor();
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  ok("page served by the backend under a strict CSP (script-src 'self'; style-src 'self'), model ready");

  const modelCard = await (await fetch(`${base}/model`)).json();
  const panel = page.getByRole("complementary", { name: "Model" });
  await panel.getByTestId("model-card-name").filter({ hasText: modelCard.name }).waitFor();
  await panel.getByText(/decision support, not a diagnosis/i).waitFor();
  ok(`model panel shows ${modelCard.name} ${modelCard.version ?? ""}`);
  if (modelCard.test) {
    await panel.getByTestId("test-split-row").filter({ hasText: "Not a new patient" }).waitFor();
    ok("the card's test split sits apart from the new patients, labelled as such");
  }
  // The full card: a dialog that scrolls inside the viewport, not a page-long panel.
  await panel.getByRole("button", { name: "The full model card" }).click();
  const cardDialog = page.getByTestId("full-card-dialog");
  const body = cardDialog.getByTestId("full-card-body");
  await body.waitFor();
  const fit = await cardDialog.evaluate((d) => ({
    height: d.getBoundingClientRect().height,
    viewport: window.innerHeight,
    scrolls: d.querySelector(".card-dialog__body").scrollHeight > d.querySelector(".card-dialog__body").clientHeight,
  }));
  assert(fit.height <= fit.viewport && fit.scrolls, `the full card scrolls inside the viewport: ${JSON.stringify(fit)}`);
  await cardDialog.getByRole("button", { name: "Close the model card" }).click();
  await body.waitFor({ state: "hidden" });
  ok(`full model card in a dialog (${Math.round(fit.height)} px of ${fit.viewport}), scrolling inside, closed`);
  await page.screenshot({ path: join(OUT, "0-start.png"), fullPage: true });

  // 1. One real slice, analysed as soon as it is added (the default): label, probability bar
  //    with threshold, model name.
  const onDrop = page.getByRole("checkbox", { name: "Analyse as soon as files are added" });
  assert(await onDrop.isChecked(), "analyse on drop is on by default");
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict"),
    page.getByTestId("file-input").setInputFiles(slices.first),
  ]);
  const first = card(nameOf(slices.first));
  await first.getByRole("img", { name: /preview of/i }).waitFor();
  assert(response.status() === 200, `/predict answered ${response.status()}`);
  const api = await response.json();
  assert(new URL(response.url()).searchParams.get("explain") === "true", "asked for a heatmap");
  const label = first.getByTestId("result-label");
  await label.waitFor({ timeout: UI_TIMEOUT });
  const labelText = (await label.textContent()).trim();
  assert(labelText === api.result, `label "${labelText}" = API result "${api.result}"`);
  if (slices.real) {
    assert(["Potentially Fracture", "Normal"].includes(labelText), `known label, got "${labelText}"`);
  } else {
    assert(labelText.length > 0, "a label is shown"); // a synthetic image may be flagged as out of distribution
  }
  const meter = first.getByRole("meter", { name: "Fracture probability" });
  const now = Number(await meter.getAttribute("aria-valuenow"));
  assert(now === Math.round(api.prediction * 100), `bar ${now} = ${api.prediction}`);
  const shown = (await first.getByTestId("probability").textContent()).trim();
  assert(/^(<1|>99|\d{1,3})%$/.test(shown), `probability text "${shown}"`);
  await first.getByText(new RegExp(`threshold ${Math.round(api.threshold * 100)}%`)).waitFor();
  // The bar's width is a React style (CSSOM, which the CSP allows): check it took effect.
  if (api.in_distribution !== false) {
    const fill = await first
      .locator(".prob__fill")
      .evaluate((el) => el.getBoundingClientRect().width / el.parentElement.getBoundingClientRect().width);
    assert(Math.abs(fill - api.prediction) < 0.02, `bar fill ${fill.toFixed(3)} drawn at ${api.prediction.toFixed(3)}`);
  }
  await first.getByTestId("model-name").filter({ hasText: api.model.name }).waitFor();
  ok(`${nameOf(slices.first)}: analysed on drop, "${labelText}", P(fracture) ${shown} (API ${api.prediction.toFixed(4)}), threshold ${api.threshold}`);
  const levelLimit = [modelCard.caveats, modelCard.limitations].flat().some((c) => /level shortcut/i.test(c ?? ""));
  if (labelText === "Potentially Fracture" && levelLimit) {
    await first.getByTestId("level-caveat").filter({ hasText: /vertebral level/ }).waitFor();
    ok("positive card carries the level-shortcut caveat of the model card");
  }
  // The rest of this scenario clicks Analyse itself.
  await onDrop.uncheck();

  // 2. Heatmap toggle: the Grad-CAM overlay replaces the preview, and back.
  const toggle = first.getByRole("switch", { name: /grad-cam heatmap/i });
  await toggle.click();
  const heat = first.getByRole("img", { name: /grad-cam heatmap overlaid/i });
  await heat.waitFor();
  assert((await heat.getAttribute("src")).startsWith("data:image/png;base64,"), "heatmap is a PNG data URL");
  const decoded = await heat.evaluate((img) => img.decode().then(() => img.naturalWidth));
  assert(decoded > 0, "heatmap PNG decodes in the browser");
  assert((await toggle.getAttribute("aria-checked")) === "true", "switch is on");
  // Drawn only where the model looked: a corner of the slice stays grey (no colour).
  const corner = await heat.evaluate((img) => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    return Array.from(context.getImageData(2, 2, 1, 1).data.slice(0, 3));
  });
  assert(corner[0] === corner[1] && corner[1] === corner[2], `no heat outside the crop: corner ${corner}`);
  await page.screenshot({ path: join(OUT, "1-result-heatmap.png"), fullPage: true });
  ok(`heatmap overlay shown (${decoded}px wide), grey outside the crop; screenshot 1-result-heatmap.png`);
  if (slices.real) {
    // From the page's top (header, model panel) down to the end of this card.
    await page.evaluate(() => window.scrollTo(0, 0));
    const box = await first.boundingBox();
    const width = page.viewportSize().width;
    await page.screenshot({
      path: README_SCREENSHOT,
      fullPage: true,
      clip: { x: 0, y: 0, width, height: Math.min(1400, Math.ceil(box.y + box.height + 24)) },
    });
    ok(`README picture regenerated from this page: ${README_SCREENSHOT}`);
  }
  await first.getByRole("button", { name: /^Enlarge/ }).click();
  const viewer = page.getByRole("dialog");
  const overlay = viewer.getByRole("img", { name: /grad-cam heatmap overlaid/i });
  await overlay.waitFor();
  await viewer.getByRole("img", { name: /, enlarged$/ }).waitFor();
  await viewer.getByText("Heatmap: where the model looked — not a fracture outline").waitFor();
  const opacity = viewer.getByRole("slider", { name: "Heatmap opacity" });
  await opacity.focus();
  await page.keyboard.press("Home");
  for (let i = 0; i < 6; i++) await page.keyboard.press("ArrowRight"); // steps of 5%
  assert((await overlay.evaluate((el) => getComputedStyle(el).opacity)) === "0.3", "heatmap opacity follows the slider");
  const width = await viewer.getByTestId("card-viewer-stage").evaluate((el) => el.getBoundingClientRect().width);
  assert(width >= 600, `enlarged slice is large (${width}px wide)`);
  await viewer.getByRole("button", { name: "Zoom in" }).click();
  await viewer.getByTestId("card-viewer-zoom").filter({ hasText: "125%" }).waitFor();
  const stage = viewer.getByTestId("card-viewer-stage");
  const box = await stage.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + 40, box.y + box.height / 2 + 25, { steps: 4 });
  await page.mouse.up();
  const moved = await stage.locator(".iv__canvas").evaluate((el) => el.style.transform);
  assert(/translate\((?!0px, 0px)/.test(moved), `drag pans the zoomed slice (${moved})`);
  await page.keyboard.down("Control");
  await page.mouse.wheel(0, -100);
  await page.keyboard.up("Control");
  await viewer.getByTestId("card-viewer-zoom").filter({ hasText: "156%" }).waitFor();
  await page.screenshot({ path: join(OUT, "1b-enlarged.png") });
  const full = viewer.getByRole("button", { name: "Full screen" });
  await full.click();
  await page.waitForFunction(() => !!document.querySelector(".iv--full"));
  const fullWidth = await stage.evaluate((el) => el.getBoundingClientRect().width);
  await full.click();
  await page.waitForFunction(() => !document.querySelector(".iv--full") && !document.fullscreenElement);
  await checkAccessibility(page, "enlarged slice");
  await page.keyboard.press("Escape");
  await viewer.waitFor({ state: "hidden" });
  ok(
    `enlarged view: ${Math.round(width)}px, heatmap overlay at 30%, zoom by button and Ctrl+wheel, drag pans, ` +
      `full screen (${Math.round(fullWidth)}px) and back, closes with Escape; screenshot 1b-enlarged.png`,
  );
  await toggle.press("Space");
  await first.getByRole("img", { name: /preview of/i }).waitFor();
  ok("heatmap toggled off with the keyboard");

  // 3. A non-image: the API's 415 in words, next to that file.
  await page.getByTestId("file-input").setInputFiles({
    name: "notes.txt",
    mimeType: "text/plain",
    buffer: Buffer.from("Patient notes: not an image.\n"),
  });
  await page.getByTestId("analyse-button").click();
  const bad = card("notes.txt").getByRole("alert");
  await bad.waitFor({ timeout: UI_TIMEOUT });
  const badText = await bad.innerText();
  assert(/Not an image/.test(badText), `error in words, got "${badText}"`);
  assert(/PNG, JPEG or DICOM/.test(badText), "error says what is accepted");
  const notesCard = page.getByRole("article", { name: "notes.txt" });
  const colours = await page.evaluate(() => {
    const css = getComputedStyle(document.documentElement);
    return [css.getPropertyValue("--error").trim(), css.getPropertyValue("--positive").trim()];
  });
  assert(colours[0] !== colours[1], `error colour ${colours[0]} differs from fracture colour ${colours[1]}`);
  assert((await notesCard.locator('svg[data-shape="error"]').count()) === 1, "the error has its own shape (crossed square)");
  assert((await first.getByTestId("result-label").textContent()).trim() === labelText, "first result kept");
  ok(`notes.txt: "${badText.replace(/\s+/g, " ").trim()}"`);

  // 4. Several files at once: /predict/batch, summary table, per-file error, heatmap on demand.
  await page.getByTestId("file-input").setInputFiles([
    asPayload(slices.second),
    { name: "empty.png", mimeType: "image/png", buffer: Buffer.alloc(0) },
  ]);
  // notes.txt is not offered again: a 415 will not change on retry.
  const analyseTwo = page.getByRole("button", { name: /^Analyse 2 slices$/ });
  const [batch] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict/batch"),
    analyseTwo.click(),
  ]);
  assert(batch.status() === 200, `/predict/batch answered ${batch.status()}`);
  const table = page.getByTestId("batch-table");
  await table.waitFor();
  const second = card(nameOf(slices.second));
  await second.getByTestId("result-label").waitFor({ timeout: UI_TIMEOUT });
  const emptyErr = card("empty.png").getByRole("alert");
  await emptyErr.waitFor({ timeout: UI_TIMEOUT });
  assert(/could not be read/i.test(await emptyErr.textContent()), "empty file explained");
  await card("notes.txt").getByRole("alert").filter({ hasText: "Not an image" }).waitFor();
  await card("notes.txt").getByRole("alert").waitFor();
  const rows = await table.locator("tbody tr").count();
  assert(rows === 4, `summary has 4 rows, got ${rows}`);
  ok(`batch: ${nameOf(slices.second)} "${(await second.getByTestId("result-label").textContent()).trim()}", empty.png explained, summary of ${rows}`);
  await second.getByRole("switch", { name: /grad-cam heatmap/i }).click();
  await second.getByRole("img", { name: /grad-cam heatmap overlaid/i }).waitFor({ timeout: UI_TIMEOUT });
  ok("heatmap fetched on demand for a batch result");
  await page.screenshot({ path: join(OUT, "2-batch.png"), fullPage: true });
  await checkAccessibility(page, "slices");

  // 4b. A natural photo: the CT gate refuses it, and the card says so in words.
  const photoApi = await apiPredict(base, photo);
  if (photoApi.in_distribution === null) {
    log(`no CT gate ran (in_distribution null): refusal not checked`);
  } else {
    assert(
      photoApi.in_distribution === false && photoApi.result === "Not a CT slice",
      `the API refuses ${photo.name}, got ${JSON.stringify(photoApi)}`,
    );
    await page.getByTestId("file-input").setInputFiles(photo);
    await page.getByTestId("analyse-button").click();
    const photoCard = card(photo.name);
    await photoCard.getByTestId("result-label").filter({ hasText: "Not a CT slice" }).waitFor({ timeout: UI_TIMEOUT });
    await photoCard.getByText(/does not look like an axial CT slice of the neck/).waitFor();
    await photoCard.getByTestId("refusal-advice").filter({ hasText: "Send the axial neck slice itself" }).waitFor();
    const refusedText = await photoCard.innerText();
    assert(!/\d+\s?%/.test(refusedText), `a refused slice shows no score: ${refusedText}`);
    assert(!/margin|distribution/i.test(refusedText), "no CT-gate number or jargon on a refused slice");
    assert((await photoCard.getByRole("meter").count()) === 0, "no probability bar as a verdict for a refused image");
    assert((await photoCard.getByRole("switch").count()) === 0, "no heatmap switch for a refused image");
    await page.getByTestId("count-refused").filter({ hasText: "1 not a CT slice" }).waitFor();
    await page.screenshot({ path: join(OUT, "2b-not-a-ct-slice.png"), fullPage: true });
    ok(
      `${photo.name}: "Not a CT slice" (CT gate margin ${photoApi.ct_gate_margin.toFixed(2)}), explained, counted apart; ` +
        "screenshot 2b-not-a-ct-slice.png",
    );
  }

  // 5. Operating point: switching re-analyses at the other threshold.
  const specific = modelCard.operating_points?.specific?.threshold;
  await page.getByRole("radio", { name: /specific/i }).check();
  if (typeof specific === "number") {
    await first
      .getByText(new RegExp(`threshold ${Math.round(specific * 100)}%`))
      .waitFor({ timeout: UI_TIMEOUT });
    ok(`switched to the specific operating point (threshold ${specific})`);
  }

  // 5b. A DICOM upload: the server's windowed preview is the card's image, header facts beside it
  //     (never patient fields), and the bone / soft-tissue window switch asks again.
  const dicom = sampleDicom();
  const schema = await (await fetch(`${base}/openapi.json`)).json();
  const declaresPreview = JSON.stringify(schema.components?.schemas ?? {}).includes('"preview_png_base64"');
  await page.getByTestId("file-input").setInputFiles(dicom);
  const dicomCard = card(dicom.name);
  const [dicomResponse] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict"),
    page.getByTestId("analyse-button").click(),
  ]);
  const dicomApi = await dicomResponse.json();
  await dicomCard.getByTestId("result-label").waitFor({ timeout: UI_TIMEOUT });
  if (declaresPreview) {
    assert(dicomApi.preview_png_base64, "the API declares preview_png_base64 and sends it for a DICOM upload");
    const img = dicomCard.getByRole("img", { name: `Preview of ${dicom.name}` });
    await img.waitFor();
    assert((await img.evaluate((el) => el.decode().then(() => el.naturalWidth))) > 0, "the DICOM preview decodes");
    for (const [field, label] of [
      ["modality", "Modality"],
      ["slice_thickness_mm", "Slice thickness"],
    ]) {
      if (dicomApi.dicom?.[field] != null) await dicomCard.getByText(label, { exact: true }).waitFor();
    }
    const cardText = await dicomCard.innerText();
    assert(!/CompressedSamples|1CT1/.test(cardText), "no patient field of the DICOM on the card");
    // The first preview is in the model's window (the server's default), and says so.
    await dicomCard.getByTestId("preview-window").filter({ hasText: "model's window" }).waitFor();
    await dicomCard.getByRole("radio", { name: "Model's window" }).and(page.locator(":checked")).waitFor();
    const [soft] = await Promise.all([
      page.waitForRequest((r) => new URL(r.url()).searchParams.get("preview_window") === "soft_tissue"),
      dicomCard.getByRole("radio", { name: "Soft tissue" }).check(),
    ]);
    assert(new URL(soft.url()).pathname === "/predict", "the window switch asks /predict again");
    await dicomCard.getByRole("radio", { name: "Soft tissue" }).and(page.locator(":checked")).waitFor();
    await dicomCard.getByTestId("preview-window").filter({ hasText: "soft-tissue window" }).waitFor();
    await img.waitFor();
    await page.screenshot({ path: join(OUT, "2c-dicom.png"), fullPage: true });
    ok(`${dicom.name}: "${dicomApi.result}", shown as the server's preview image, soft-tissue window asked; screenshot 2c-dicom.png`);
  } else {
    // Depends on the backend's DICOM preview (preview_png_base64 in /predict's schema).
    log("the API does not declare preview_png_base64 yet: DICOM image check skipped, placeholder checked");
    await dicomCard.getByText(/the server decodes DICOM/i).waitFor();
    await dicomCard.getByRole("button", { name: "Show image" }).waitFor();
  }

  // 5c. Take away: a PDF report of one slice (verdict, "not a diagnosis") and a CSV of the scores.
  const firstNow = (await first.getByTestId("result-label").textContent()).trim();
  const slicePdf = await download(page, () => first.getByTestId("slice-report").click(), "report-slice.pdf");
  const sliceText = pdfText(slicePdf);
  assert(readFileSync(slicePdf).subarray(0, 5).toString() === "%PDF-", "the report is a PDF");
  assert(sliceText.includes("not a diagnosis"), "the report says: not a diagnosis");
  assert(sliceText.includes(firstNow), `the report holds the verdict "${firstNow}"`);
  const csv = readFileSync(await download(page, () => page.getByTestId("slices-csv").click(), "slice-results.csv"), "utf-8");
  assert(csv.startsWith("name,result,fracture_probability"), `CSV header, got ${csv.split("\n")[0]}`);
  assert(csv.includes(nameOf(slices.first)), "CSV lists the first slice");
  ok(`report of ${nameOf(slices.first)} downloaded (PDF text: "${firstNow}", "not a diagnosis"); CSV of ${csv.trim().split("\n").length - 1} rows`);

  // 6. Tablet: no horizontal scrolling, screenshot.
  await page.setViewportSize({ width: 768, height: 1024 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert(overflow <= 0, `no horizontal overflow at 768px (got ${overflow}px)`);
  await page.screenshot({ path: join(OUT, "3-tablet.png"), fullPage: true });
  ok("tablet layout (768px) fits; screenshot 3-tablet.png");
  return nameOf(slices.first);
}

// ---- study mode: one series in, one verdict, the slice scores along the neck ----
async function studyScenario(page, base, photo, photoRefused) {
  const series = buildSeries(photoRefused ? photo : null);
  await page.setViewportSize({ width: 1366, height: 900 });
  await page.getByRole("tab", { name: "Study (whole series)" }).click();
  const panel = page.getByRole("tabpanel", { name: "Study (whole series)" });
  await panel.getByRole("heading", { name: "Analyse a whole series" }).waitFor();

  // 7. A folder of slices, through the folder picker.
  await panel.getByTestId("study-folder-input").setInputFiles(series.dir);
  await panel.getByTestId("study-selection").filter({ hasText: `${series.count} files` }).waitFor();
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict/study", { timeout: UI_TIMEOUT }),
    panel.getByTestId("study-analyse-button").click(),
  ]);
  assert(response.status() === 200, `/predict/study answered ${response.status()}`);
  assert(new URL(response.url()).searchParams.get("explain") === "true", "asked for the top slices' heatmaps");
  const api = await response.json();
  assert(api.slice_count === series.count && api.errors.length === 0, `all ${series.count} slices scored`);
  const positions = api.slices.map((s) => s.position);
  assert(positions.every((p, i) => i === 0 || p >= positions[i - 1]), "slices ordered head to foot");

  // The verdict, as the API gave it.
  const verdict = panel.getByTestId("study-verdict");
  const badge = verdict.getByTestId("study-result");
  await badge.waitFor({ timeout: UI_TIMEOUT });
  assert((await badge.textContent()).trim() === api.result, `verdict "${await badge.textContent()}" = API "${api.result}"`);
  if (series.real) assert(api.result === "Potentially Fracture", `a series with fracture slices is flagged, got ${api.result}`);
  if (api.result !== "Not a CT slice") {
    const meter = verdict.getByRole("meter", { name: "Study score" });
    const now = Number(await meter.getAttribute("aria-valuenow"));
    assert(now === Math.round(api.prediction * 100), `study score bar ${now} = ${api.prediction}`);
  }

  // The chart: one bar per slice, kinds and top slices as in the answer.
  const chart = panel.getByRole("img", { name: /fracture probability of each slice, head to foot/i });
  await chart.waitFor();
  const bars = chart.getByTestId("chart-bar");
  assert((await bars.count()) === api.slices.length, `chart has ${api.slices.length} bars, got ${await bars.count()}`);
  const drawn = await bars.evaluateAll((els) => els.map((e) => [e.getAttribute("data-kind"), e.getAttribute("data-top")]));
  const expected = api.slices.map((s, i) => [
    s.in_distribution === false ? "ood" : s.prediction >= api.threshold ? "above" : "below",
    api.top_slices.findIndex((t) => t.index === i) + 1 || null,
  ]);
  assert(
    JSON.stringify(drawn.map(([k, t]) => [k, t && Number(t)])) === JSON.stringify(expected),
    `bars drawn as ${JSON.stringify(drawn)}, expected ${JSON.stringify(expected)}`,
  );
  if (series.photoName) {
    const i = api.slices.findIndex((s) => s.name === series.photoName);
    assert(i >= 0 && drawn[i][0] === "ood", `${series.photoName} is marked as not a CT slice`);
  }
  const viewer = panel.getByTestId("study-viewer");
  const heading = (i) => viewer.getByRole("heading", { name: `Slice ${i + 1} of ${api.slices.length}` });
  const decoded = (img) => img.evaluate((el) => el.decode().then(() => el.naturalWidth));

  // The most suspicious slice first, with the heatmap from the study answer.
  if (api.top_slices.length) {
    const top = api.top_slices[0];
    await heading(top.index).waitFor();
    const heat = viewer.getByRole("img", { name: `Grad-CAM heatmap overlaid on ${top.name}` });
    await heat.waitFor();
    assert((await heat.getAttribute("src")) === `data:image/png;base64,${top.heatmap_png_base64}`, "top slice's heatmap shown");
    assert((await decoded(heat)) > 0, "heatmap decodes");
    assert((await decoded(viewer.getByRole("img", { name: `Slice ${top.name}` }))) > 0, "slice image decodes");
  }
  await page.screenshot({ path: join(OUT, "4-study.png"), fullPage: true });
  ok(
    `study of ${api.slice_count} slices: "${api.result}", score ${api.prediction.toFixed(4)} vs ${api.threshold.toFixed(3)} ` +
      `(${api.aggregation}), chart of ${api.slices.length} bars, top slice ${api.top_slices[0]?.name ?? "none"} with heatmap; ` +
      "screenshot 4-study.png",
  );

  // 8. Another slice, from the chart: its heatmap on demand from /predict?explain=true.
  const tops = new Set(api.top_slices.map((t) => t.index));
  const other = api.slices.findIndex((s, i) => s.in_distribution !== false && !tops.has(i) && s.prediction < api.threshold);
  const pick = other >= 0 ? other : api.slices.findIndex((s, i) => s.in_distribution !== false && !tops.has(i));
  if (pick >= 0) {
    await bars.nth(pick).click();
    await heading(pick).waitFor();
    const [single] = await Promise.all([
      page.waitForResponse((r) => {
        const u = new URL(r.url());
        return u.pathname === "/predict" && u.searchParams.get("explain") === "true";
      }),
      viewer.getByRole("button", { name: "Show heatmap" }).click(),
    ]);
    assert(single.status() === 200, `/predict?explain=true answered ${single.status()}`);
    const heat = viewer.getByRole("img", { name: `Grad-CAM heatmap overlaid on ${api.slices[pick].name}` });
    await heat.waitFor({ timeout: UI_TIMEOUT });
    assert((await decoded(heat)) > 0, "on-demand heatmap decodes");
    // The chart and the selected slice together, as a user sees them.
    await page.evaluate(() => {
      const y = document.getElementById("chart-title").closest("section").getBoundingClientRect().top;
      window.scrollBy(0, y - 16);
    });
    await page.screenshot({ path: join(OUT, "4b-study-slice.png") });
    ok(`clicked bar ${pick + 1} (${api.slices[pick].name}): heatmap fetched on demand; screenshot 4b-study-slice.png`);
  }

  // The table alternative selects too; the photo is explained as not scored.
  const table = panel.getByRole("table", { name: /fracture probability of each slice/i });
  if (series.photoName) {
    await table.getByRole("button", { name: series.photoName }).click();
    await viewer.getByTestId("viewer-name").filter({ hasText: series.photoName }).waitFor();
    await viewer.getByText(/left out of the study score/).waitFor();
    ok(`table row ${series.photoName}: "Not a CT slice", left out of the study score`);
  }
  // The keyboard: the scrubber under the chart.
  const scrubber = panel.getByRole("slider", { name: "Selected slice" });
  await scrubber.focus();
  await page.keyboard.press("Home");
  await heading(0).waitFor();
  await page.keyboard.press("ArrowRight");
  await heading(1).waitFor();
  ok("scrubber moves through the slices with the keyboard");

  // 8b. The reader: the mouse wheel over the viewer, the keys from anywhere in it, the top
  //     slices one key away; a click on a bar hands the keys to the viewer.
  const n = api.slices.length;
  const svStage = viewer.getByTestId("sv-viewer-stage");
  await svStage.scrollIntoViewIfNeeded();
  const stageBox = await svStage.boundingBox();
  assert(stageBox.width >= 500, `the study slice is large (${Math.round(stageBox.width)}px wide)`);
  await page.mouse.move(stageBox.x + stageBox.width / 2, stageBox.y + stageBox.height / 2);
  await page.mouse.wheel(0, 100);
  await heading(2).waitFor();
  await page.mouse.wheel(0, -100);
  await heading(1).waitFor();
  await svStage.click();
  await page.keyboard.press("ArrowDown");
  await heading(2).waitFor();
  await page.keyboard.press("ArrowUp");
  await heading(1).waitFor();
  await page.keyboard.press("End");
  await heading(n - 1).waitFor();
  for (const [r, top] of api.top_slices.slice(0, 9).entries()) {
    await page.keyboard.press(String(r + 1));
    await heading(top.index).waitFor();
  }
  await bars.nth(0).click();
  await heading(0).waitFor();
  await page.keyboard.press("ArrowDown");
  await heading(1).waitFor();
  ok(`reader: wheel and arrow keys step through ${n} slices, End jumps to the last, keys 1–${Math.min(9, api.top_slices.length)} to the top slices`);

  // The chart to scale: bars where their positions are (even spacing only without an order).
  const positionsStrict =
    positions.every((p, i) => i === 0 || p > positions[i - 1]) || positions.every((p, i) => i === 0 || p < positions[i - 1]);
  const axis = positionsStrict ? (api.position_unit === "mm" ? "Position along the neck (mm)" : "Slice number") : "Series order";
  await chart.getByText(axis, { exact: true }).waitFor();
  if (positionsStrict && n > 2) {
    const xs = await bars.evaluateAll((els) =>
      els.map((g) => {
        const r = g.querySelector(".chart__bar");
        return Number(r.getAttribute("x")) + Number(r.getAttribute("width")) / 2;
      }),
    );
    const k = (xs[n - 1] - xs[0]) / (positions[n - 1] - positions[0]);
    xs.forEach((x, i) => assert(Math.abs(x - xs[0] - k * (positions[i] - positions[0])) < 0.5, `bar ${i} drawn at its position`));
  }
  ok(`chart x axis: "${axis}"${positionsStrict ? ", bars at their positions" : ""}`);

  // Full screen, and back.
  await viewer.getByRole("button", { name: "Full screen" }).click();
  await page.waitForFunction(() => !!document.querySelector(".iv--full"));
  await page.screenshot({ path: join(OUT, "4c-study-fullscreen.png") });
  await viewer.getByRole("button", { name: "Full screen" }).click();
  await page.waitForFunction(() => !document.querySelector(".iv--full") && !document.fullscreenElement);
  ok("study viewer goes full screen and back; screenshot 4c-study-fullscreen.png");

  // Take away: the study's PDF report and a CSV of every slice.
  const studyPdf = await download(page, () => panel.getByTestId("study-report").click(), "report-study.pdf");
  const studyText = pdfText(studyPdf);
  assert(studyText.includes(api.result), `the study report holds the verdict "${api.result}"`);
  assert(studyText.includes("not a diagnosis"), "the study report says: not a diagnosis");
  assert(!api.slices.some((s) => studyText.includes(s.name)), "no file name in the report");
  const studyCsv = readFileSync(await download(page, () => panel.getByTestId("study-csv").click(), "slice-scores.csv"), "utf-8");
  assert(studyCsv.trim().split("\n").length === n + 1, `CSV has a row per slice (${n})`);
  ok(`study report downloaded (PDF text: "${api.result}", "not a diagnosis", no file names); CSV of ${n} slices`);
  await checkAccessibility(page, "study");

  // Tablet: the chart scales, nothing overflows.
  await page.setViewportSize({ width: 768, height: 1024 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert(overflow <= 0, `no horizontal overflow in the study view at 768px (got ${overflow}px)`);
  await page.screenshot({ path: join(OUT, "5-study-tablet.png"), fullPage: true });
  ok("study view at 768px fits; screenshot 5-study-tablet.png");
  await page.setViewportSize({ width: 1366, height: 900 });

  // 9. Not one series (no slice numbers in the names): the 400 in words.
  const slice = syntheticSlicePng();
  await panel.getByTestId("study-files-input").setInputFiles([
    { name: "scan.png", mimeType: "image/png", buffer: slice },
    { name: "another-scan.png", mimeType: "image/png", buffer: slice },
  ]);
  const [refused] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict/study"),
    panel.getByTestId("study-analyse-button").click(),
  ]);
  assert(refused.status() === 400, `/predict/study answered ${refused.status()} to unnumbered files`);
  const alert = panel.getByTestId("study-error");
  await alert.waitFor();
  const alertText = (await alert.innerText()).replace(/\s+/g, " ");
  assert(/Not one series/.test(alertText) && /slice number/.test(alertText), `400 in words, got "${alertText}"`);
  ok(`unnumbered files: "${alertText.trim()}"`);
  return { studyLabel: "series", studyResult: api.result };
}

// ---- history: kept in this browser (IndexedDB), reopened after a reload, cleared ----
async function historyScenario(page, sliceName, study) {
  await page.reload();
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  const history = page.getByRole("region", { name: "Recent results" });
  await history.waitFor();
  const count = await history.getByTestId("history-entry").count();
  assert(count >= 2, `history lists the results after a reload (${count})`);
  await history.getByRole("button", { name: `Open ${study.studyLabel} (study)` }).click();
  const studyPanel = page.getByRole("tabpanel", { name: "Study (whole series)" });
  await studyPanel.getByTestId("study-result").filter({ hasText: study.studyResult }).waitFor();
  await studyPanel.getByTestId("study-chart").waitFor();
  // Slices analysed together are one group (collapsed): open the groups to reach them.
  for (const group of await history.getByTestId("history-group").all()) await group.locator("summary").click();
  await history.getByRole("button", { name: `Open ${sliceName} (slice)` }).first().click();
  const reopened = page.getByRole("article", { name: sliceName });
  await reopened.getByTestId("result-label").waitFor();
  await reopened.getByRole("img", { name: /preview of/i }).waitFor();
  await page.screenshot({ path: join(OUT, "6-history.png"), fullPage: true });
  await checkAccessibility(page, "history");
  await history.getByTestId("history-clear").click();
  await history.waitFor({ state: "detached" });
  await page.reload();
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  assert((await page.getByRole("region", { name: "Recent results" }).count()) === 0, "history empty after Clear");
  ok(`history: ${count} results back after a reload, a study and a slice reopened, cleared; screenshot 6-history.png`);
}

// ---- /docs and /redoc offline: every request to a host other than 127.0.0.1 is aborted ----
async function docsScenario(browser, base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const outside = [];
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1") return route.continue();
    outside.push(url.href);
    return route.abort();
  });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`),
    );
  });
  try {
    const docs = await page.goto(`${base}/docs`);
    const csp = docs.headers()["content-security-policy"] ?? "";
    assert(/script-src 'self'(;|$)/.test(csp) && !/https?:/.test(csp), `docs CSP: scripts from the app only, got "${csp}"`);
    await page.locator('.opblock-summary-path[data-path="/predict"]').waitFor({ timeout: UI_TIMEOUT });
    await page.locator('.opblock-summary-path[data-path="/report"]').waitFor();
    await page.screenshot({ path: join(OUT, "7-docs-offline.png") });
    ok("/docs: Swagger UI from the app's own copy lists POST /predict and /report with the outside network blocked");
    await page.goto(`${base}/redoc`);
    await page.getByRole("heading", { name: "Triage a whole CT series" }).waitFor({ timeout: UI_TIMEOUT });
    ok("/redoc: ReDoc renders offline too");
    // ReDoc's sidebar always asks for its maker's logo from cdn.redoc.ly: the CSP blocks it
    // (nothing leaves the machine) and ReDoc hides the broken image. Anything else fails.
    const violations = (await page.evaluate(() => window.__cspViolations ?? [])).filter(
      (v) => v !== "img-src blocked https://cdn.redoc.ly/redoc/logo-mini.svg",
    );
    assert(violations.length === 0, `no CSP violations on the docs pages:\n  ${violations.join("\n  ")}`);
    assert(outside.length === 0, `the docs asked nothing of the outside, asked:\n  ${outside.join("\n  ")}`);
    assert(problems.length === 0, `no page errors on the docs pages:\n  ${problems.join("\n  ")}`);
  } catch (err) {
    await page.screenshot({ path: join(OUT, "failure-docs.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context.close();
  }
}

// ---- the worklist: saved studies, the radiologist's read, monitoring, a restart ----
/**
 * Two small series for the worklist: original (un-augmented) slices from the middle of a fracture
 * series and of a normal series of the shared data set; two synthetic numbered series (one with
 * a "fracture line", one without) when it is absent.
 */
function worklistSeries() {
  const originals = (sub) => {
    const sorted = largestSeries(sub);
    const middle = Math.max(0, Math.floor(sorted.length / 2) - 3);
    return sorted.slice(middle, middle + 6).map(asPayload);
  };
  const fracture = originals("fracture");
  const normal = originals("normal");
  if (fracture.length && normal.length) return { real: true, fracture, normal };
  const synthetic = (prefix, lineAt) =>
    Array.from({ length: 6 }, (_, i) => ({
      name: `${prefix} (${i + 1}).png`,
      mimeType: "image/png",
      buffer: syntheticSlicePng(224, lineAt),
    }));
  return { real: false, fracture: synthetic("SYNTHFRACTURE", 6), normal: synthetic("SYNTHNORMAL", 400) };
}

async function saveStudy(base, files) {
  const form = new FormData();
  for (const f of files) form.append("files", new Blob([f.buffer], { type: f.mimeType }), f.name);
  const res = await fetch(`${base}/predict/study?save=true&explain=false`, { method: "POST", body: form });
  assert(res.status === 200, `/predict/study?save=true answered ${res.status}`);
  const answer = await res.json();
  assert(Number.isInteger(answer.worklist_id), `a saved study has a worklist_id: ${JSON.stringify(answer.worklist_id)}`);
  return answer;
}

async function apiGet(base, path) {
  const res = await fetch(`${base}${path}`);
  assert(res.ok, `GET ${path} answered ${res.status}`);
  return res.json();
}

async function worklistScenario(page, base) {
  const series = worklistSeries();
  log(`worklist: ${series.real ? "real CT slices" : "synthetic slices"}, ${series.fracture.length} + ${series.normal.length}`);
  await page.setViewportSize({ width: 1366, height: 900 });
  await page.goto(base);
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });

  // The normal series arrives first; the worklist is opened; then the fracture series arrives.
  const normal = await saveStudy(base, series.normal);
  await page.getByRole("tab", { name: "Worklist" }).click();
  const panel = page.getByRole("tabpanel", { name: "Worklist" });
  const rows = panel.getByTestId("worklist-row");
  await rows.first().waitFor({ timeout: UI_TIMEOUT });
  assert((await rows.count()) === 1, `one study listed before the second is saved, got ${await rows.count()}`);
  const firstUpdate = await panel.getByTestId("worklist-updated").textContent();
  const fracture = await saveStudy(base, series.fracture);
  log(`worklist: saved study ${normal.worklist_id} (${normal.result}) then ${fracture.worklist_id} (${fracture.result})`);
  if (series.real) {
    assert(fracture.result === "Potentially Fracture", `fracture slices flagged, got ${fracture.result}`);
    assert(normal.result !== "Potentially Fracture", `normal slices not flagged, got ${normal.result}`);
  }
  // The server's order: flagged first, then the longest waiting.
  const flagged = (a) => a.result === "Potentially Fracture";
  const expected = flagged(fracture) && !flagged(normal) ? [fracture, normal] : [normal, fracture];
  const order = () => rows.evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-id"))));
  // No reload: the view's polling (every 10 s) brings the second study in.
  await page.waitForFunction(
    () => document.querySelectorAll('[data-testid="worklist-row"]').length === 2,
    undefined,
    { timeout: 30_000 },
  );
  const shown = await order();
  assert(
    JSON.stringify(shown) === JSON.stringify(expected.map((a) => a.worklist_id)),
    `worklist order ${shown} = flagged first ${expected.map((a) => a.worklist_id)}`,
  );
  const api = await apiGet(base, "/worklist");
  assert(
    JSON.stringify(api.items.map((e) => e.id)) === JSON.stringify(shown),
    `the view's order is the server's: ${api.items.map((e) => e.id)}`,
  );
  const updated = (await panel.getByTestId("worklist-updated").textContent()).trim();
  assert(/^Updated \d\d:\d\d:\d\d$/.test(updated) && updated !== firstUpdate, `"${updated}" after "${firstUpdate}"`);
  for (const [i, a] of expected.entries()) {
    const badge = rows.nth(i).getByTestId("worklist-verdict");
    assert((await badge.textContent()).trim() === a.result, `row ${i} verdict = ${a.result}`);
    assert((await rows.nth(i).getByTestId("worklist-status").textContent()).trim() === "New", `row ${i} is new`);
  }
  ok(`worklist: ${shown.length} studies, ${expected[0].result} first (${shown}), the second appeared by polling`);

  // Open the first (Enter on its button), and disagree with the product's call (key D).
  const top = expected[0];
  await panel.getByRole("button", { name: `Open study ${top.worklist_id}, ${top.result}` }).press("Enter");
  const entry = panel.getByTestId("worklist-entry");
  await entry.getByRole("heading", { name: `Study ${top.worklist_id}` }).waitFor();
  assert((await entry.getByTestId("entry-verdict").textContent()).trim() === top.result, "entry verdict");
  const topRows = entry.getByTestId("entry-top-slices").locator("tbody tr");
  assert((await topRows.count()) === top.top_slices.length, `top slices ${top.top_slices.length}`);
  assert(
    (await topRows.first().locator("th").textContent()).trim() === top.top_slices[0].name,
    `first top slice ${top.top_slices[0].name}`,
  );
  await entry.getByTestId("entry-pacs-note").waitFor();
  await rows.first().getByTestId("worklist-status").filter({ hasText: "Opened" }).waitFor();
  await page.keyboard.press("d");
  const read = entry.getByTestId("worklist-read");
  await read.waitFor({ timeout: UI_TIMEOUT });
  const fractureRead = !flagged(top);
  assert(
    (await read.locator(".dot-label").textContent()).trim() === (fractureRead ? "Fracture" : "No fracture"),
    `the read shown is the disagreeing one (fracture ${fractureRead})`,
  );
  await rows.first().getByTestId("worklist-status").filter({ hasText: "Reviewed" }).waitFor();
  const stored = await apiGet(base, `/worklist/${top.worklist_id}`);
  assert(stored.status === "reviewed" && stored.reviews.length === 1, `stored: ${stored.status}, ${stored.reviews.length} read`);
  assert(stored.reviews[0].fracture === fractureRead, `stored read fracture=${stored.reviews[0].fracture}`);
  await page.screenshot({ path: join(OUT, "10-worklist.png"), fullPage: true });
  await checkAccessibility(page, "worklist and entry");
  ok(`worklist: study ${top.worklist_id} opened, D recorded "${fractureRead ? "fracture" : "no fracture"}"; screenshot 10-worklist.png`);

  // Monitoring counts the one read.
  await page.getByRole("tab", { name: "Monitoring" }).click();
  const monitoring = page.getByRole("tabpanel", { name: "Monitoring" });
  const overall = monitoring.getByTestId("monitoring-overall");
  await overall.waitFor({ timeout: UI_TIMEOUT });
  assert((await overall.getByTestId("monitoring-reviewed").textContent()).trim() === "1", "reviewed count 1");
  assert((await apiGet(base, "/monitoring")).overall.reviewed === 1, "the API counts 1 reviewed");
  await monitoring.getByTestId("monitoring-week").waitFor();
  await page.screenshot({ path: join(OUT, "11-monitoring.png"), fullPage: true });
  await checkAccessibility(page, "monitoring");
  await cspViolations(page);
  ok("monitoring: 1 reviewed study overall, by model, scanner and week; screenshot 11-monitoring.png");
  // Leave the page before the server stops: its polling must not meet a closed port.
  await page.goto("about:blank");
  return { id: top.worklist_id, fractureRead, other: expected[1].worklist_id };
}

/** After a restart on the same worklist file: the entry, its status and its read are still there. */
async function worklistAfterRestart(page, base, reviewed) {
  await page.goto(base);
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  await page.getByRole("tab", { name: "Worklist" }).click();
  const panel = page.getByRole("tabpanel", { name: "Worklist" });
  const row = panel.locator(`[data-testid="worklist-row"][data-id="${reviewed.id}"]`);
  await row.getByTestId("worklist-status").filter({ hasText: "Reviewed" }).waitFor({ timeout: UI_TIMEOUT });
  assert((await panel.getByTestId("worklist-row").count()) === 2, "both studies listed after the restart");
  await row.click();
  const entry = panel.getByTestId("worklist-entry");
  const read = entry.getByTestId("worklist-read");
  await read.waitFor({ timeout: UI_TIMEOUT });
  assert((await read.count()) === 1, "one read after the restart");
  assert(
    (await read.locator(".dot-label").textContent()).trim() === (reviewed.fractureRead ? "Fracture" : "No fracture"),
    "the read survived the restart",
  );
  await page.getByRole("tab", { name: "Monitoring" }).click();
  const overall = page.getByRole("tabpanel", { name: "Monitoring" }).getByTestId("monitoring-overall");
  await overall.waitFor({ timeout: UI_TIMEOUT });
  assert((await overall.getByTestId("monitoring-reviewed").textContent()).trim() === "1", "reviewed count 1 after the restart");
  await page.screenshot({ path: join(OUT, "12-worklist-restarted.png"), fullPage: true });
  await checkAccessibility(page, "monitoring after a restart");
  await cspViolations(page);
  ok(`worklist: after a backend restart on the same file, study ${reviewed.id} is reviewed with its read`);
}

// ---- a study bundle (RSNA 2022 format): C1-C7 beside the slice chart ----
// A tiny study bundle written by the product's exporter (testing/study_bundle.py: a real 2.5D
// Keras model and study head with random weights, not trained: this checks the page, not the
// model) and one synthetic RSNA-layout series (testing/rsna_synth.py), served by a second backend.
function python(args, what) {
  const made = spawnSync(PYTHON, args, { cwd: ROOT, encoding: "utf-8", env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: "2" } });
  assert(made.status === 0, `${what} failed:\n${made.stderr}`);
}

async function vertebraeScenario(browser) {
  const bundle = join(OUT, "study-bundle");
  const data = join(OUT, "rsna-synthetic");
  rmSync(bundle, { recursive: true, force: true });
  rmSync(data, { recursive: true, force: true });
  python(["-c", "import sys; from testing.study_bundle import write_study_bundle; write_study_bundle(sys.argv[1])", bundle], "study bundle");
  python(["-m", "testing.rsna_synth", "--out", data, "--studies", "1", "--size", "64", "--slices", "24", "--seed", "3"], "synthetic study");
  const series = join(data, "train_images", readdirSync(join(data, "train_images"))[0]);
  const server = await startBackend(await freePort(), { modelDir: bundle, logName: "server-study-bundle.log" });
  try {
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    page.setDefaultTimeout(20_000);
    await page.goto(server.base);
    await page.getByRole("tab", { name: "Study (whole series)" }).click();
    const panel = page.getByRole("tabpanel", { name: "Study (whole series)" });
    await panel.getByTestId("study-folder-input").setInputFiles(series);
    await panel.getByTestId("study-selection").waitFor();
    const [response] = await Promise.all([
      page.waitForResponse((r) => new URL(r.url()).pathname === "/predict/study", { timeout: UI_TIMEOUT }),
      panel.getByTestId("study-analyse-button").click(),
    ]);
    assert(response.status() === 200, `/predict/study answered ${response.status()} with a study bundle`);
    const api = await response.json();
    const names = ["C1", "C2", "C3", "C4", "C5", "C6", "C7"];
    assert(api.vertebrae && names.every((n) => typeof api.vertebrae[n] === "number"), `vertebrae C1-C7 in the answer: ${JSON.stringify(api.vertebrae)}`);
    const chart = panel.getByTestId("vertebrae-chart");
    await chart.waitFor();
    const bars = chart.getByTestId("vertebra-bar");
    assert((await bars.count()) === 7, "seven vertebra bars");
    for (let i = 0; i < 7; i++) {
      const bar = bars.nth(i);
      const name = await bar.getAttribute("data-vertebra");
      assert(name === names[i], `bar ${i} is ${name}, wanted ${names[i]} (C1 at the top)`);
      const shown = Number(await bar.getAttribute("data-probability"));
      assert(Math.abs(shown - api.vertebrae[name]) < 1e-9, `${name} bar ${shown} = API ${api.vertebrae[name]}`);
    }
    await checkAccessibility(page, "study-bundle answer");
    await page.screenshot({ path: join(OUT, "9-vertebrae.png"), fullPage: true });
    ok(`study bundle: "${api.result}" (patient_overall ${api.prediction.toFixed(3)}), C1-C7 bars match the API; screenshot 9-vertebrae.png`);
    await page.close();
  } finally {
    await stopBackend(server);
  }
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  assert(existsSync(join(DIST, "index.html")), `no ${DIST}/index.html: run \`npm run build\` first`);
  assert(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
  let server;
  let browser;
  let problems = [];
  try {
    server = await startBackend(await freePort());
    ok("backend ready");
    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    page.setDefaultTimeout(20_000);
    problems = await watchPage(page);
    try {
      const photo = naturalPhoto();
      const firstSlice = await scenario(page, server.base, photo);
      const photoRefused = (await apiPredict(server.base, photo)).in_distribution === false;
      const study = await studyScenario(page, server.base, photo, photoRefused);
      await historyScenario(page, firstSlice, study);
      await cspViolations(page);
      const reviewed = await worklistScenario(page, server.base);
      await stopBackend(server);
      server = await startBackend(await freePort(), { worklistDb: server.worklistDb, logName: "server-restarted.log" });
      ok("backend restarted on the same worklist file");
      await worklistAfterRestart(page, server.base, reviewed);
      ok("no Content-Security-Policy violations");
    } catch (err) {
      await page.screenshot({ path: join(OUT, "failure.png"), fullPage: true }).catch(() => {});
      throw err;
    }
    assert(problems.length === 0, `no page/console errors:\n  ${problems.join("\n  ")}`);
    ok("no page or console errors");
    await docsScenario(browser, server.base);
    await vertebraeScenario(browser);
    log(`PASS (screenshots in ${OUT})`);
  } finally {
    await browser?.close().catch(() => {});
    await stopBackend(server);
  }
}

main().catch((err) => {
  console.error(`[e2e] FAIL: ${err.stack ?? err}`);
  process.exitCode = 1;
});

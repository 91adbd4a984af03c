// End-to-end test in headless Chromium against the REAL backend and the REAL default model.
//
//   node e2e/e2e.mjs            (needs frontend/dist built, the repo's .venv, Debian chromium)
//
// Starts `uvicorn backend.app.main:app` on a free port from the repo root (it serves
// frontend/dist at /), waits for /ready, drives the page like a user, saves screenshots
// under <repo>/test-output/frontend-e2e/ and stops the server at the end.
// Env: CHROMIUM_PATH (default /usr/bin/chromium), PYTHON (default <repo>/.venv/bin/python),
//      E2E_READY_TIMEOUT_S (default 300), MODEL_DIR (passed through to the backend),
//      E2E_CT_DIR (default ../shared/data/cervical-ct/train; a synthetic PNG is used when absent).
import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);

const FRONTEND = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = resolve(FRONTEND, "..");
const DIST = join(FRONTEND, "dist");
const OUT = join(ROOT, "test-output", "frontend-e2e");
const CT_DIR = process.env.E2E_CT_DIR ?? join(ROOT, "..", "shared", "data", "cervical-ct", "train");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const PYTHON = process.env.PYTHON ?? join(ROOT, ".venv", "bin", "python");
const READY_TIMEOUT_S = Number(process.env.E2E_READY_TIMEOUT_S ?? 300);
const UI_TIMEOUT = 60_000;

const log = (msg) => console.log(`[e2e] ${msg}`);
const ok = (msg) => console.log(`[e2e] \u2713 ${msg}`);

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

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

function syntheticSlicePng(size = 224) {
  const raw = Buffer.alloc((size + 1) * size);
  const c = size / 2;
  for (let y = 0; y < size; y++) {
    raw[y * (size + 1)] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      const r = Math.hypot(x - c, (y - c) * 1.2);
      let v = r < 95 ? 70 : 10; // soft tissue disc on air
      if (r > 28 && r < 40) v = 235; // vertebral body cortex
      if (r <= 28) v = 150; // cancellous bone
      if (Math.abs(x - c - 6) < 2 && r < 40) v = 60; // a "fracture line"
      raw[y * (size + 1) + 1 + x] = v;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // grayscale
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
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

// ---- the real backend ----
async function startBackend(port) {
  assert(existsSync(PYTHON), `no Python at ${PYTHON}: run \`make venv\``);
  const logFile = join(OUT, "server.log");
  const out = createWriteStream(logFile);
  const proc = spawn(
    PYTHON,
    ["-m", "uvicorn", "backend.app.main:app", "--host", "127.0.0.1", "--port", String(port)],
    {
      cwd: ROOT,
      detached: true, // own process group, so the whole tree can be stopped
      env: { ...process.env, FRONTEND_DIST: DIST, TF_CPP_MIN_LOG_LEVEL: "2", PYTHONUNBUFFERED: "1" },
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
  return { proc, base, isAlive: () => !exited };
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
async function checkAccessibility(page) {
  await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const violations = await page.evaluate(async () => {
    const res = await window.axe.run(document, { resultTypes: ["violations"] });
    return res.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
    }));
  });
  const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of violations) log(`axe ${v.impact}: ${v.id} (${v.help}) at ${v.nodes.join(", ")}`);
  assert(serious.length === 0, `no serious accessibility violations, got ${serious.map((v) => v.id).join(", ")}`);
  ok(`axe-core: no serious or critical accessibility violations (${violations.length} minor)`);
}

// ---- the scenario ----
async function scenario(page, base) {
  const slices = pickSlices();
  const card = (name) => page.locator("article", { has: page.getByRole("heading", { name, exact: true }) });
  const nameOf = (f) => (typeof f === "string" ? f.split("/").pop() : f.name);

  await page.goto(base);
  await page.getByRole("heading", { name: "C-Spine CT Fracture Triage" }).waitFor();
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  ok("page served by the backend, model ready");

  const modelCard = await (await fetch(`${base}/model`)).json();
  const panel = page.getByRole("complementary", { name: "Model" });
  await panel.getByTestId("model-card-name").filter({ hasText: modelCard.name }).waitFor();
  await panel.getByText(/decision support, not a diagnosis/i).waitFor();
  ok(`model panel shows ${modelCard.name} ${modelCard.version ?? ""}`);
  await page.screenshot({ path: join(OUT, "0-start.png"), fullPage: true });

  // 1. One real slice: label, probability bar with threshold, model name.
  await page.getByTestId("file-input").setInputFiles(slices.first);
  const first = card(nameOf(slices.first));
  await first.getByRole("img", { name: /preview of/i }).waitFor();
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/predict"),
    page.getByTestId("analyse-button").click(),
  ]);
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
  await first.getByTestId("model-name").filter({ hasText: api.model.name }).waitFor();
  ok(`${nameOf(slices.first)}: "${labelText}", P(fracture) ${shown} (API ${api.prediction.toFixed(4)}), threshold ${api.threshold}`);

  // 2. Heatmap toggle: the Grad-CAM overlay replaces the preview, and back.
  const toggle = first.getByRole("switch", { name: /grad-cam heatmap/i });
  await toggle.click();
  const heat = first.getByRole("img", { name: /grad-cam heatmap overlaid/i });
  await heat.waitFor();
  assert((await heat.getAttribute("src")).startsWith("data:image/png;base64,"), "heatmap is a PNG data URL");
  const decoded = await heat.evaluate((img) => img.decode().then(() => img.naturalWidth));
  assert(decoded > 0, "heatmap PNG decodes in the browser");
  assert((await toggle.getAttribute("aria-checked")) === "true", "switch is on");
  await page.screenshot({ path: join(OUT, "1-result-heatmap.png"), fullPage: true });
  ok(`heatmap overlay shown (${decoded}px wide); screenshot 1-result-heatmap.png`);
  await first.getByRole("button", { name: /^Enlarge/ }).click();
  const viewer = page.getByRole("dialog");
  await viewer.getByRole("img", { name: /grad-cam heatmap overlaid/i }).waitFor();
  await page.screenshot({ path: join(OUT, "1b-enlarged.png") });
  await page.keyboard.press("Escape");
  await viewer.waitFor({ state: "hidden" });
  ok("enlarged view opens and closes with Escape; screenshot 1b-enlarged.png");
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
  await checkAccessibility(page);

  // 5. Operating point: switching re-analyses at the other threshold.
  const specific = modelCard.operating_points?.specific?.threshold;
  await page.getByRole("radio", { name: /specific/i }).check();
  if (typeof specific === "number") {
    await first
      .getByText(new RegExp(`threshold ${Math.round(specific * 100)}%`))
      .waitFor({ timeout: UI_TIMEOUT });
    ok(`switched to the specific operating point (threshold ${specific})`);
  }

  // 6. Tablet: no horizontal scrolling, screenshot.
  await page.setViewportSize({ width: 768, height: 1024 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert(overflow <= 0, `no horizontal overflow at 768px (got ${overflow}px)`);
  await page.screenshot({ path: join(OUT, "3-tablet.png"), fullPage: true });
  ok("tablet layout (768px) fits; screenshot 3-tablet.png");
}

async function main() {
  mkdirSync(OUT, { recursive: true });
  assert(existsSync(join(DIST, "index.html")), `no ${DIST}/index.html: run \`npm run build\` first`);
  assert(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install -y chromium`);
  let server;
  let browser;
  const problems = [];
  try {
    server = await startBackend(await freePort());
    ok("backend ready");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    page.setDefaultTimeout(20_000);
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      // The browser logs every HTTP error response; those for the deliberate bad uploads are expected.
      if (msg.type() === "error" && !/status of (400|413|415)/.test(msg.text())) {
        problems.push(`console error: ${msg.text()}`);
      }
    });
    try {
      await scenario(page, server.base);
    } catch (err) {
      await page.screenshot({ path: join(OUT, "failure.png"), fullPage: true }).catch(() => {});
      throw err;
    }
    assert(problems.length === 0, `no page/console errors:\n  ${problems.join("\n  ")}`);
    ok("no page or console errors");
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

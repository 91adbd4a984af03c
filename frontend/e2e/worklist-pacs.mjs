// The worklist of studies that came through a real PACS, in headless Chromium: one phase of
// tests/pacs/test_worklist_browser.py, which starts Orthanc, the API (serving frontend/dist)
// and the PACS worker, and runs this script against the API it started:
//
//   node e2e/worklist-pacs.mjs '{"base": "http://127.0.0.1:PORT", "phase": "read",
//                                "flagged": ID, "normal": ID, "out": "DIR", "label": "sqlite"}'
//
// phase "read": both studies listed, the flagged one first; the flagged one opened: its top
//   slice and its heatmap shown from the PACS (decoded images with real pixel data: a CT slice
//   with contrast, a heatmap in colour); Disagree with the D key; Monitoring counts 1 read.
// phase "restarted" (after an API restart on the same database): both still listed, the
//   flagged one reviewed with the same read, its images still shown, Monitoring still 1.
// Fails (exit 1) on any page error, console error or CSP violation. Screenshots go to `out`.
import { join } from "node:path";
import { assert, checkAccessibility, cspViolations, launchChromium, ok, UI_TIMEOUT, watchPage } from "./browser.mjs";

const args = JSON.parse(process.argv[2] ?? "{}");
for (const key of ["base", "phase", "flagged", "normal", "out", "label"]) assert(args[key] != null, `argument ${key}`);

/** Pixel statistics of a shown <img> (drawn on a canvas: a blob: URL is same-origin). */
function pixelStats(img) {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
  let min = 255;
  let max = 0;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    const grey = (r + g + b) / 3;
    min = Math.min(min, grey);
    max = Math.max(max, grey);
    if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
  }
  return { width: img.naturalWidth, height: img.naturalHeight, src: img.src, range: max - min, coloured: coloured / (data.length / 4) };
}

async function shownImages(entry) {
  const images = entry.getByTestId("entry-images");
  await images.waitFor({ timeout: UI_TIMEOUT });
  const slice = images.getByTestId("entry-slice-image");
  const heatmap = images.getByTestId("entry-heatmap-image");
  for (const [what, image] of [["slice", slice], ["heatmap", heatmap]]) {
    // A failure says what the panel showed instead (the API's answer, or still loading).
    await image.waitFor({ state: "visible", timeout: UI_TIMEOUT }).catch(async (err) => {
      const shown = (await images.textContent().catch(() => "?")).replace(/\s+/g, " ");
      throw new Error(`the ${what} image was not shown; the panel read: "${shown}" (${err.message.split("\n")[0]})`);
    });
  }
  await entry.page().waitForFunction(
    () => [...document.querySelectorAll('[data-testid="entry-images"] img')].every((i) => i.complete && i.naturalWidth > 0),
    undefined,
    { timeout: UI_TIMEOUT },
  );
  const stats = { slice: await slice.evaluate(pixelStats), heatmap: await heatmap.evaluate(pixelStats) };
  assert(stats.slice.src.startsWith("blob:") && stats.heatmap.src.startsWith("blob:"), "images from the API's answers");
  assert(stats.slice.width >= 64 && stats.slice.height >= 64, `slice ${stats.slice.width}x${stats.slice.height}`);
  assert(stats.slice.range >= 64, `the slice has contrast (grey range ${stats.slice.range})`);
  assert(stats.slice.coloured === 0, "the slice is greyscale");
  assert(stats.heatmap.width >= 64 && stats.heatmap.height >= 64, `heatmap ${stats.heatmap.width}x${stats.heatmap.height}`);
  assert(stats.heatmap.coloured > 0.01, `the heatmap is in colour (${(stats.heatmap.coloured * 100).toFixed(1)} % coloured pixels)`);
  return stats;
}

async function monitoringCount(page) {
  await page.getByRole("tab", { name: "Monitoring" }).click();
  const overall = page.getByRole("tabpanel", { name: "Monitoring" }).getByTestId("monitoring-overall");
  await overall.waitFor({ timeout: UI_TIMEOUT });
  return (await overall.getByTestId("monitoring-reviewed").textContent()).trim();
}

async function run(page) {
  const { base, phase, flagged, normal, out, label } = args;
  await page.goto(base);
  await page.getByText("Model ready").waitFor({ timeout: UI_TIMEOUT });
  await page.getByRole("tab", { name: "Worklist" }).click();
  const panel = page.getByRole("tabpanel", { name: "Worklist" });
  const rows = panel.getByTestId("worklist-row");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="worklist-row"]').length === 2, undefined, {
    timeout: UI_TIMEOUT,
  });
  const order = await rows.evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-id"))));
  assert(JSON.stringify(order) === JSON.stringify([flagged, normal]), `the flagged study first: ${order} = ${[flagged, normal]}`);
  assert((await rows.nth(0).getByTestId("worklist-verdict").textContent()).trim() === "Potentially Fracture", "row 1 flagged");
  assert((await rows.nth(1).getByTestId("worklist-verdict").textContent()).trim() === "Normal", "row 2 normal");
  const status = (i) => rows.nth(i).getByTestId("worklist-status").textContent();
  ok(`${label}: both PACS studies listed, the flagged one (${flagged}) first`);

  await panel.getByRole("button", { name: `Open study ${flagged}, Potentially Fracture` }).click();
  const entry = panel.getByTestId("worklist-entry");
  await entry.getByRole("heading", { name: `Study ${flagged}` }).waitFor();
  assert((await entry.getByTestId("entry-source").textContent()).trim() === "PACS", "the entry came from the PACS");
  const stats = await shownImages(entry);
  ok(
    `${label}: slice ${stats.slice.width}x${stats.slice.height} (grey range ${stats.slice.range}) and heatmap ` +
      `${stats.heatmap.width}x${stats.heatmap.height} (${(stats.heatmap.coloured * 100).toFixed(1)} % coloured) from the PACS`,
  );

  const read = entry.getByTestId("worklist-read");
  if (phase === "read") {
    assert((await entry.getByTestId("entry-no-reads").count()) === 1, "no read before");
    await page.keyboard.press("d");
    await read.waitFor({ timeout: UI_TIMEOUT });
    await rows.first().getByTestId("worklist-status").filter({ hasText: "Reviewed" }).waitFor();
  } else {
    await read.waitFor({ timeout: UI_TIMEOUT });
    assert((await status(0)).trim() === "Reviewed", "still reviewed after the restart");
  }
  assert((await read.count()) === 1, `one read, got ${await read.count()}`);
  assert((await read.locator(".dot-label").textContent()).trim() === "No fracture", "the read disagrees with the flag");
  assert((await status(1)).trim() === "New", "the normal study is still new");
  await page.screenshot({ path: join(out, `worklist-pacs-${label}-${phase}.png`), fullPage: true });
  await checkAccessibility(page, `${label} ${phase}: PACS study`);
  ok(`${label}: ${phase === "read" ? "D recorded" : "still holds"} the read "no fracture" of study ${flagged}`);

  const reviewed = await monitoringCount(page);
  assert(reviewed === "1", `Monitoring counts 1 reviewed study, shows ${reviewed}`);
  await cspViolations(page);
  ok(`${label}: Monitoring counts 1 reviewed study (${phase})`);
  await page.goto("about:blank"); // no polling left when the API stops
}

async function main() {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    page.setDefaultTimeout(20_000);
    const problems = await watchPage(page);
    try {
      await run(page);
    } catch (err) {
      await page.screenshot({ path: join(args.out, `worklist-pacs-${args.label}-${args.phase}-failure.png`), fullPage: true }).catch(() => {});
      throw err;
    }
    assert(problems.length === 0, `no page/console errors:\n  ${problems.join("\n  ")}`);
  } finally {
    await browser.close().catch(() => {});
  }
}

main().catch((err) => {
  console.error(`[e2e] FAIL: ${err.stack ?? err}`);
  process.exitCode = 1;
});

// What the browser end-to-end scripts share: messages, assertions, the headless Chromium they
// drive (Debian's /usr/bin/chromium: never a downloaded browser), the page's watchers (page
// errors, console errors, Content-Security-Policy violations) and the axe-core check.
//   e2e.mjs             the web app against the real backend (`make e2e`)
//   worklist-pacs.mjs   the worklist of a real Orthanc + PACS worker (tests/pacs/test_worklist_browser.py)
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const UI_TIMEOUT = 60_000;

export const log = (msg) => console.log(`[e2e] ${msg}`);
export const ok = (msg) => console.log(`[e2e] \u2713 ${msg}`);

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** Headless Chromium, no sandbox, GPU or background network (the CI container has none). */
export function launchChromium() {
  return chromium.launch({
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
}

/**
 * Watch `page`: its errors and console errors go into the returned list (an HTTP error whose
 * status `expected` matches is left out), CSP violations into window.__cspViolations (the init
 * script runs outside the page's CSP; see cspViolations).
 */
export async function watchPage(page, expected = /status of (400|413|415)/) {
  const problems = [];
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // The browser logs every HTTP error response; those a scenario causes on purpose are expected.
    if (msg.type() === "error" && !expected.test(msg.text())) problems.push(`console error: ${msg.text()}`);
  });
  return problems;
}

export async function cspViolations(page) {
  const violations = await page.evaluate(() => window.__cspViolations ?? []);
  assert(violations.length === 0, `no CSP violations:\n  ${violations.join("\n  ")}`);
}

const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf-8");

export async function checkAccessibility(page, where) {
  // Evaluated over the DevTools protocol: a <script> tag (addScriptTag) is inline script,
  // which the app's CSP rightly refuses.
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE_SOURCE);
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
  ok(`axe-core (${where}): no serious or critical accessibility violations (${violations.length} minor)`);
}

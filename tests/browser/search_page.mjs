// Browser test of the `vitrine serve` web page: uploads a catalogue photo, checks that the
// expected item ranks first and that its image loads, optionally generates subject lines.
//
//   cd tests/browser && npm ci
//   VITRINE_URL=http://127.0.0.1:8080 QUERY_IMAGE=photo.png EXPECT_ID=100 \
//     SCREENSHOT=search.png [QUERY_TEXT="words"] [GENERATE=1 KEYWORDS="summer sale"] node search_page.mjs
//
// QUERY_TEXT (for a server that answers text queries): typed into the words box with the
// photo chosen, the mixed search must still put EXPECT_ID first.
//
// Environment: CHROMIUM (browser binary, default /usr/bin/chromium),
// SEARCH_TIMEOUT_MS (default 60000), GENERATE_TIMEOUT_MS (default 180000).
// Prints one JSON line and exits 0 on success; prints the reason and exits 1 on failure.
import fs from "node:fs";
import { chromium } from "playwright-core";

class Failure extends Error {}

function env(name, fallback) {
  const v = process.env[name];
  if (v) return v;
  if (fallback !== undefined) return fallback;
  throw new Failure(`environment variable ${name} is required`);
}

const check = (ok, msg) => { if (!ok) throw new Failure(msg); };

async function waitState(page, selector, timeout, what) {
  try {
    await page.waitForSelector(`${selector}[data-state=done], ${selector}[data-state=error]`, { state: "attached", timeout });
  } catch (e) {
    throw new Failure(`${what} did not finish within ${timeout} ms`);
  }
  const state = await page.getAttribute(selector, "data-state");
  if (state === "error") {
    const msg = await page.textContent(selector === "#results" ? "#search-status" : "#gen-status");
    throw new Failure(`${what} failed in the page: ${(msg || "").trim()}`);
  }
}

async function main() {
  const base = env("VITRINE_URL").replace(/\/+$/, "");
  const queryImage = env("QUERY_IMAGE");
  const expectId = env("EXPECT_ID");
  const screenshot = env("SCREENSHOT");
  const generate = process.env.GENERATE === "1";
  const keywords = env("KEYWORDS", "summer sale");
  const searchTimeout = Number(env("SEARCH_TIMEOUT_MS", "60000"));
  const generateTimeout = Number(env("GENERATE_TIMEOUT_MS", "180000"));
  check(fs.existsSync(queryImage), `QUERY_IMAGE ${queryImage} does not exist`);

  const infoRes = await fetch(`${base}/v1/info`).catch((e) => {
    throw new Failure(`cannot reach ${base}/v1/info: ${e.cause ? e.cause.message : e.message}`);
  });
  check(infoRes.ok, `GET /v1/info returned HTTP ${infoRes.status}`);
  const info = await infoRes.json();
  check(info.tasks && info.tasks.search, "the server does not serve search (info.tasks.search is false)");
  if (generate) check(info.tasks.generate, "GENERATE=1 but the server does not serve generation");
  const columns = Object.keys((info.catalog && info.catalog.columns) || {});

  const browser = await chromium.launch({
    executablePath: env("CHROMIUM", "/usr/bin/chromium"),
    headless: true,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking", "--no-first-run"],
  });
  const errors = [];
  const summary = { ok: false, url: base, expect_id: expectId };
  let page;
  let nextShot = screenshot;  // where a failure leaves its picture of the page
  try {
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("console", (msg) => { if (msg.type() === "error") errors.push(`console: ${msg.text()}`); });
    page.on("pageerror", (err) => errors.push(`page error: ${err.message}`));

    const res = await page.goto(`${base}/`, { waitUntil: "load" });
    check(res && res.ok(), `GET / returned HTTP ${res ? res.status() : "nothing"}`);

    if (columns.length) {
      try {
        await page.waitForFunction((n) => {
          const sels = [...document.querySelectorAll("#filters select")];
          return sels.length >= n && sels.some((s) => s.options.length > 1);
        }, columns.length, { timeout: 15000 });
      } catch (e) {
        throw new Failure(`the page did not show a filter select for each of ${columns.length} columns (${columns.join(", ")})`);
      }
    }
    summary.filters = await page.locator("#filters select").count();

    await page.setInputFiles("input[type=file]", queryImage);
    await waitState(page, "#results", searchTimeout, "the search");

    const cards = page.locator("[data-testid=result]");
    summary.results = await cards.count();
    check(summary.results > 0, "the search returned no results");
    const first = cards.first();
    summary.first_id = await first.getAttribute("data-id");
    check(summary.first_id === expectId, `first result is ${summary.first_id}, expected ${expectId}`);
    try {
      await first.locator("img").waitFor({ timeout: 15000 });
      await page.waitForFunction(() => {
        const img = document.querySelector("[data-testid=result] img");
        return img && img.complete && img.naturalWidth > 0;
      }, null, { timeout: 15000 });
    } catch (e) {
      throw new Failure(`the image of the first result (${expectId}) did not load`);
    }
    const queryText = process.env.QUERY_TEXT;
    if (queryText) {
      check(info.tasks.text_search, "QUERY_TEXT is set but the server does not answer text queries");
      check(await page.isVisible("#query-text"), "the words box is hidden");
      await page.evaluate(() => { document.querySelector("#results").dataset.state = "idle"; });
      await page.fill("#query-text", queryText);
      await page.press("#query-text", "Enter");
      await waitState(page, "#results", searchTimeout, "the photo + words search");
      check(await page.isVisible("#text-weight"), "no text-weight slider with a photo and words");
      summary.mixed_first_id = await cards.first().getAttribute("data-id");
      check(summary.mixed_first_id === expectId, `photo + words: first result is ${summary.mixed_first_id}, expected ${expectId}`);
    }
    summary.status = ((await page.textContent("#search-status")) || "").trim();
    await page.screenshot({ path: screenshot, fullPage: true });
    summary.screenshot = screenshot;

    if (generate) {
      const shot = screenshot.replace(/(\.png)?$/i, "-generate.png");
      nextShot = shot;
      await page.click("#tab-generate");
      await page.fill("#keywords", keywords);
      await page.click("#generate");
      await waitState(page, "#candidates", generateTimeout, "subject-line generation");
      summary.candidates = await page.locator("[data-testid=candidate]").count();
      check(summary.candidates > 0, "generation returned no candidates");
      await page.screenshot({ path: shot, fullPage: true });
      summary.screenshot_generate = shot;
    }
    nextShot = null;

    check(errors.length === 0, `the page logged errors:\n  ${errors.join("\n  ")}`);
    summary.ok = true;
    console.log(JSON.stringify(summary));
  } catch (e) {
    // Keep a picture of the failing page for debugging.
    if (page && nextShot) await page.screenshot({ path: nextShot, fullPage: true }).catch(() => {});
    if (errors.length && !(e instanceof Failure && e.message.startsWith("the page logged"))) {
      e.message += `\npage errors:\n  ${errors.join("\n  ")}`;
    }
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`FAIL: ${e instanceof Failure ? e.message : e.stack || e}`);
  process.exit(1);
});

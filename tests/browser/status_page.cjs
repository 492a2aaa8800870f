// The status page in headless Chromium against the running demo (scripts/browser-test starts
// it): an instrument turns stale when the simulated feed stops, the operator logs in with the
// demo's token, emergency-closes a position through the confirm step and sees it closed, and
// the page says plainly when it loses the appliance. Screenshots go to $SHOTS.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require(process.env.PW_CORE);

const URL_ = process.env.URL;
const TOKEN_FILE = process.env.TOKEN_FILE;
const SHOTS = process.env.SHOTS;
const DEMO_PID = Number(process.env.DEMO_PID || 0);
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tg-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    timeout: 30000,
  });
  const problems = [];
  let stopping = false;
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    // Errors while the appliance runs are failures (a CSP refusal, a 4xx/5xx); after it is
    // stopped on purpose, failed fetches are the point.
    page.on("console", (m) => { if (m.type() === "error" && !stopping) problems.push("console: " + m.text()); });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    const shot = async (name) => { await page.screenshot({ path: path.join(SHOTS, name), fullPage: true }); log("screenshot", name); };

    await page.goto(URL_, { waitUntil: "domcontentloaded" });
    await page.locator('#instruments tr[data-symbol="BOSCHLTD"]').waitFor({ timeout: 10000 });
    log("page loaded; instruments listed");

    // BOSCHLTD ticks every 0.2 s until the outage: live first, then stale once the feed stops.
    await page.locator('#instruments tr[data-symbol="BOSCHLTD"][data-band="live"]').waitFor({ timeout: 20000 });
    await shot("01-live.png");
    // A phone: positions as cards, the close button in view.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(1100);
    await shot("02-phone.png");
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.locator("#feed", { hasText: "DOWN" }).waitFor({ timeout: 25000 });
    log("feed down");
    await page.locator('#instruments tr[data-symbol="BOSCHLTD"][data-band="stale"]').waitFor({ timeout: 8000 });
    const band = await page.locator('#instruments tr[data-symbol="BOSCHLTD"] td:nth-child(4)').innerText();
    if (!/stale/.test(band)) throw new Error("BOSCHLTD band cell says " + band);
    log("BOSCHLTD turned stale");
    await shot("03-stale.png");

    // Log in with the demo's token.
    const token = fs.readFileSync(TOKEN_FILE, "utf8").trim();
    await page.fill("#token", token);
    await page.click('#login button[type="submit"]');
    await page.locator("#who", { hasText: "logged in" }).waitFor({ timeout: 5000 });
    log("logged in");
    await shot("04-logged-in.png");

    // Emergency close of an open RELIANCE position (it never crosses on its own), with the
    // confirm step.
    const open = page.locator('#positions tr[data-symbol="RELIANCE"][data-status="open"]');
    await open.first().waitFor({ timeout: 25000 });
    const id = await open.first().getAttribute("data-id");
    log("closing", id);
    await page.locator(`#positions tr[data-id="${id}"] button[data-close]`).click();
    const confirm = page.locator(`button[data-confirm="${id}"]`);
    await confirm.waitFor({ timeout: 5000 });
    const box = await page.locator(`#positions tr[data-confirm-for="${id}"] .confirmbox`).innerText();
    if (!/at market\?/.test(box)) throw new Error("confirm step says: " + box);
    await shot("05-confirm.png");
    await confirm.click();
    await page.locator(`#closes tr[data-id="${id}"][data-reason="emergency"]`).waitFor({ timeout: 20000 });
    await page.locator(`#positions tr[data-id="${id}"]`).waitFor({ state: "detached", timeout: 5000 });
    await page.locator("#msg", { hasText: "closed" }).waitFor({ timeout: 5000 });
    const msg = await page.locator("#msg").innerText();
    log("closed:", msg);
    await shot("06-closed.png");

    // The appliance goes away: the page says so.
    if (DEMO_PID) {
      if (problems.length) throw new Error("page problems:\n" + problems.join("\n"));
      stopping = true;
      process.kill(DEMO_PID, "SIGTERM");
      await page.locator("body.lost").waitFor({ timeout: 10000 });
      await page.locator('#alarm[data-state="lost"]').waitFor({ timeout: 3000 });
      const lost = await page.locator("#lost").innerText();
      if (!/LOST CONTACT/.test(lost)) throw new Error("lost banner says " + lost);
      log("lost contact shown");
      await shot("07-lost.png");
    }
    if (problems.length) throw new Error("page problems:\n" + problems.join("\n"));
  } finally {
    await ctx.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

const limit = setTimeout(() => { console.error("browser test: over its time limit"); process.exit(1); }, 110000);
main().then(() => { clearTimeout(limit); log("browser test passed"); }, (e) => { clearTimeout(limit); console.error("browser test FAILED:", e); process.exit(1); });

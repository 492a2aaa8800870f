// The status page over HTTPS in headless Chromium against `tickguard run` (scripts/browser-test
// starts it with api.tls_cert / api.tls_key and a self-signed certificate): the operator logs
// in, and the session cookie the browser keeps is `__Host-tg_session`, `Secure`, `HttpOnly`,
// `SameSite=Strict`, `Path=/`, with no Domain, and it carries the page's mutations.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require(process.env.PW_CORE);

const URL_ = process.env.URL;
const TOKEN_FILE = process.env.TOKEN_FILE;
const SHOTS = process.env.SHOTS;
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "tg-chromium-tls-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // The appliance's certificate is self-signed: the trader clicks through it once.
    ignoreHTTPSErrors: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
    timeout: 30000,
  });
  const problems = [];
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    await page.goto(URL_, { waitUntil: "domcontentloaded" });
    await page.locator("#alarm").waitFor({ timeout: 10000 });
    const token = fs.readFileSync(TOKEN_FILE, "utf8").trim();
    await page.fill("#token", token);
    await page.click('#login button[type="submit"]');
    await page.locator("#who", { hasText: /logged in/i }).waitFor({ timeout: 10000 });
    log("logged in over HTTPS");
    await page.screenshot({ path: path.join(SHOTS, "08-https-logged-in.png"), fullPage: true });
    const cookies = await ctx.cookies(URL_);
    const names = cookies.map((c) => c.name);
    const c = cookies.find((x) => x.name === "__Host-tg_session");
    if (!c) throw new Error("no __Host-tg_session cookie; the browser holds " + JSON.stringify(names));
    if (names.includes("tg_session")) throw new Error("a plain tg_session cookie over HTTPS: " + JSON.stringify(names));
    if (!c.secure) throw new Error("the session cookie is not Secure");
    if (!c.httpOnly) throw new Error("the session cookie is not HttpOnly");
    if (c.sameSite !== "Strict") throw new Error("SameSite is " + c.sameSite);
    if (c.path !== "/") throw new Error("Path is " + c.path);
    if (c.domain && c.domain.startsWith(".")) throw new Error("a Domain attribute: " + c.domain);
    log("cookie", c.name, "Secure HttpOnly SameSite=Strict Path=/");
    // The session works: the page can silence the buzzer (a mutation with the CSRF token).
    const ack = await page.evaluate(async () => {
      const s = await (await fetch("/api/v1/session")).json();
      const r = await fetch("/api/v1/alerts/ack", { method: "POST", headers: { "X-CSRF-Token": s.csrf_token } });
      return r.status;
    });
    if (ack !== 200) throw new Error("a mutation with the session answered " + ack);
    if (problems.length) throw new Error(problems.join("\n"));
    log("passed");
  } finally {
    await ctx.close();
  }
}

main().catch((e) => { console.error("FAILED:", e && e.stack || e); process.exit(1); });

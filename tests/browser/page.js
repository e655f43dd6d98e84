// Drives Debian's chromium (headless) through shoal server's page: loads it, refuses a
// malformed magnet, adds a torrent by its magnet link (the metadata comes from the local
// seeder), waits for 100%, pauses it, opens its details and keeps a screenshot.
// Usage: node page.js URL MAGNET SCREENSHOT. Exit code 0 when every step passed.
"use strict";
const { chromium } = require("playwright-core");

const [url, magnet, shot] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForSelector("text=No torrents yet", { timeout: 15000 });

    // A malformed magnet: the server says what is wrong.
    await page.fill("#magnet", "magnet:?xt=urn:btih:zz");
    await page.click("#addMagnet");
    await page.waitForSelector("#msg.err >> text=bad magnet link", { timeout: 15000 });

    // The torrent by its magnet link: the metadata comes from the local seeder, then the
    // content; it reaches 100%.
    await page.fill("#magnet", magnet);
    await page.click("#addMagnet");
    await page.waitForSelector(".t .name", { timeout: 15000 });
    await page.waitForSelector(".t .pct >> text=100.0%", { timeout: 120000 });
    await page.waitForSelector(".t .badge.seeding", { timeout: 30000 });

    // Pause it.
    await page.click(".t button:has-text('Pause')");
    await page.waitForSelector(".t .badge.paused", { timeout: 15000 });
    await page.waitForSelector(".t button:has-text('Resume')", { timeout: 15000 });

    // Open its details (files, peers, limits) for the screenshot.
    await page.click(".t button:has-text('More')");
    await page.waitForSelector(".t.open .details table", { timeout: 15000 });
    await page.waitForTimeout(1200);
    await page.screenshot({ path: shot, fullPage: true });
    if (errors.length) throw new Error("errors in the page: " + errors.join("; "));
    console.log("ok");
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });

// Drives the admin page of a running bridge in Debian's chromium (tests/admin_ui.rs):
// log in with the token, see the dead letter HB_DEAD_ID, open its body, requeue it, preview and
// run a replay. Prints one line per step; exits non-zero on the first failure, or if the page
// broke its Content-Security-Policy or logged an error.
import { chromium } from "playwright-core";

const admin = process.env.HB_ADMIN;
const token = process.env.HB_TOKEN;
const deadId = process.env.HB_DEAD_ID;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
const problems = [];
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.setDefaultTimeout(15000);
  await page.goto(admin + "/ui");
  await page.locator("#health").getByText("ready").waitFor();
  console.log("loaded");
  await page.fill("#token", token);
  await page.click("#save-token");
  const row = page.locator(`tr[data-id="${deadId}"]`);
  await row.waitFor();
  console.log("dead letter shown: " + (await row.innerText()).replace(/\s+/g, " "));
  await row.getByRole("button", { name: "Body" }).click();
  await page.locator("#body").getByText("metadata", { exact: false }).waitFor();
  console.log("body shown: " + (await page.locator("#body").innerText()).slice(0, 80));
  await row.getByRole("button", { name: "Requeue" }).click();
  await page.locator("#msg").getByText("requeued 1 record(s)").waitFor();
  await row.waitFor({ state: "detached" });
  console.log("requeued");
  await page.fill("#since", "1");
  await page.click("#preview");
  await page.locator("#msg").getByText("plan:").waitFor();
  console.log("plan: " + (await page.locator("#plan").innerText()).replace(/\n/g, " | "));
  await page.click("#run");
  await page.locator("#msg").getByText("replayed").waitFor();
  console.log((await page.locator("#msg").innerText()).trim());
} finally {
  await browser.close();
}
if (problems.length > 0) {
  console.error("page problems: " + problems.join("; "));
  process.exit(1);
}

// Browser test of the web console in headless Chromium (Debian `chromium` + playwright-core),
// driven by tests/tests/console.rs, which starts the server and checks what this prints.
//
//   node console.mjs BASE_URL SHOTS_DIR DOWNLOAD_DIR
//   env: CHROMIUM (default /usr/bin/chromium), NURSE_PASSWORD, BILLING_PASSWORD
//
// Prints one JSON line with what it saw.
import { chromium } from "playwright-core"
import path from "node:path"

const [base, shots, downloads] = process.argv.slice(2)
const out = {}
const fail = msg => {
  console.error(`console.mjs: ${msg}`)
  process.exit(1)
}
setTimeout(() => fail("timed out after 120 s"), 120000)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
})

async function login(user, password) {
  // The server's certificate is self-signed for the test.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1200, height: 900 },
    acceptDownloads: true,
  })
  const page = await context.newPage()
  await page.goto(`${base}/console/`)
  if (!page.url().endsWith("/console/login")) fail(`not sent to the login page: ${page.url()}`)
  await page.fill("#username", user)
  await page.fill("#password", password)
  await Promise.all([page.waitForURL(`${base}/console/`), page.click("button[type=submit]")])
  return { context, page }
}

// A nurse of Sunnyvale: the worklist of November 2026, a patient with charts, no access to
// another facility, and no form post without the CSRF token.
{
  const { context, page } = await login("nina", process.env.NURSE_PASSWORD)
  await page.goto(`${base}/console/?facility=sunnyvale&as_of=2026-11-20`)
  out.worklist_patients = [
    ...new Set(await page.$$eval("#worklist tbody tr", rows => rows.map(r => r.dataset.patient))),
  ]
  out.worklist_title = await page.textContent("h1")
  await page.screenshot({ path: path.join(shots, "worklist.png"), fullPage: true })

  await Promise.all([
    page.waitForURL(/\/console\/patient\?/),
    page.click('#worklist tbody tr[data-patient="p-007"] td a'),
  ])
  out.patient_title = await page.textContent("h1")
  out.chart_svgs = await page.locator(".chart svg").count()
  out.timeline_rows = await page.locator("#timeline tbody tr").count()
  await page.screenshot({ path: path.join(shots, "patient.png"), fullPage: true })

  const other = await page.goto(`${base}/console/patient?facility=oakridge&patient=p-001&month=2026-11`)
  out.other_facility_status = other.status()
  out.other_facility_text = await page.textContent("main")

  // The nurse's own session cookie, but no CSRF token in the form.
  const noCsrf = await context.request.post(`${base}/console/logout`, {
    form: { facility: "sunnyvale" },
    maxRedirects: 0,
  })
  out.csrf_missing_status = noCsrf.status()
  // Billing pages are not for nurses.
  const close = await page.goto(`${base}/console/close?facility=sunnyvale&month=2026-11`)
  out.nurse_close_status = close.status()
  await context.close()
}

// Billing staff: close November and download the CSV summary.
{
  const { context, page } = await login("bill", process.env.BILLING_PASSWORD)
  await page.goto(`${base}/console/close?facility=sunnyvale&month=2026-11`)
  out.before_close = (await page.textContent(".card")).trim()
  await Promise.all([page.waitForURL(/notice=/), page.click("#close-month")])
  out.close_notice = await page.textContent(".notice")
  out.encounter_rows = await page.locator("#encounters tbody tr").count()
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click("#download-csv"),
  ])
  const file = path.join(downloads, download.suggestedFilename())
  await download.saveAs(file)
  out.csv = file
  await context.close()
}

// Lockout: five wrong passwords lock the account, even for the right one afterwards.
{
  const context = await browser.newContext({ ignoreHTTPSErrors: true })
  const page = await context.newPage()
  let last = ""
  for (let i = 0; i < 6; i++) {
    await page.goto(`${base}/console/login`)
    await page.fill("#username", "lou")
    await page.fill("#password", i < 5 ? "not the password" : process.env.NURSE_PASSWORD)
    await page.click("button[type=submit]")
    last = await page.textContent(".error")
  }
  out.lockout_message = last
  await context.close()
}

await browser.close()
console.log(JSON.stringify(out))
process.exit(0)

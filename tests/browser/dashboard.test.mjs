// The operator dashboard in Debian's headless Chromium, driven by
// playwright-core. Started by worker/tests/dashboard_browser.rs, which runs
// a real dkl-worker (with PostgreSQL and an SMTP server) and passes what it
// prepared in the environment:
//   DKL_DASHBOARD_URL, DKL_DASHBOARD_TOKEN, DKL_FAILED_JOB, DKL_NEWSLETTER,
//   DKL_QUARANTINED, DKL_SCRIPT_MESSAGE, DKL_SCREENSHOTS, CHROMIUM
// Run by hand: see README.md (tests).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through worker/tests/dashboard_browser.rs`);
  return v;
};
const base = env('DKL_DASHBOARD_URL');
const token = env('DKL_DASHBOARD_TOKEN');
const shots = env('DKL_SCREENSHOTS');
mkdirSync(shots, { recursive: true });

let browser;
let context;
let page;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--disable-gpu', '--disable-quic', '--disable-sync'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(15_000);
});

after(async () => {
  await browser?.close();
});

const shot = (name, p = page) => p.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

/// Reloads `url` until `check()` is true (the pages have no script: a
/// person reloads too).
async function reloadUntil(url, what, check, timeoutMs = 60_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    await page.goto(url);
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what} at ${url}`);
    await page.waitForTimeout(500);
  }
}

test('a wrong token is refused with 401; the right one opens the overview', { timeout: 120_000 }, async () => {
  const login = await page.goto(`${base}/dashboard`);
  assert.equal(new URL(page.url()).pathname, '/dashboard/login', 'sent to the login page');
  assert.equal(login.status(), 200);
  await page.fill('input[name=secret]', 'not-the-token');
  await page.fill('input[name=name]', 'Browser test');
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/dashboard/login') && r.request().method() === 'POST'),
    page.click('button[type=submit]'),
  ]);
  assert.equal(refused.status(), 401);
  assert.match(await page.textContent('.error'), /Wrong token or password/);
  await shot('login-refused');

  await page.fill('input[name=secret]', token);
  await page.fill('input[name=name]', 'Browser test');
  await page.click('button[type=submit]');
  await page.waitForURL(`${base}/dashboard`);
  assert.equal(await page.textContent('h1'), 'Overview');
  assert.ok(await page.locator('table#queues tbody tr').count() >= 1, 'queues listed');
  assert.equal(await page.locator('svg.chart').count(), 2, 'two charts');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'dkl_dashboard');
  assert.ok(session.httpOnly, 'HttpOnly');
  assert.equal(session.sameSite, 'Strict');
  assert.equal(session.path, '/dashboard');
  await shot('overview');
});

test('a newsletter is paused and resumed mid-send, and goes out to everyone', { timeout: 120_000 }, async () => {
  const id = env('DKL_NEWSLETTER');
  const url = `${base}/dashboard/newsletters/${id}`;
  const row = () => page.locator(`tr[data-newsletter="${id}"]`);
  const sentCount = async () => Number((await row().locator('td').nth(3).textContent()).trim());
  await reloadUntil(url, 'the newsletter to be going out', async () =>
    (await row().locator('.state').textContent()) === 'sending' && (await sentCount()) > 0);
  await shot('newsletter-sending');
  await row().locator('button', { hasText: 'Pause' }).click();
  await page.waitForURL(/notice=/);
  assert.match(await page.textContent('.notice'), /paused/);
  assert.equal(await row().locator('.state').textContent(), 'paused');
  // A send already on the wire may still finish; after that nothing moves.
  await page.waitForTimeout(1500);
  await page.goto(url);
  const atPause = await sentCount();
  await page.waitForTimeout(2000);
  await page.goto(url);
  assert.equal(await sentCount(), atPause, 'nothing sent while paused');
  const total = Number((await row().locator('.muted').last().textContent()).split('/')[1]);
  assert.ok(atPause < total, `paused mid-send (${atPause} of ${total})`);
  await shot('newsletter-paused');
  await row().locator('button', { hasText: 'Resume' }).click();
  await page.waitForURL(/notice=/);
  await reloadUntil(url, 'the newsletter to be sent', async () =>
    (await row().locator('.state').textContent()) === 'sent', 90_000);
  assert.equal(await sentCount(), total, 'everyone got it');
  await page.goto(`${base}/dashboard/newsletters`);
  await shot('newsletters');
});

test('a failed job is seen, retried, and watched to the end', { timeout: 120_000 }, async () => {
  const id = env('DKL_FAILED_JOB');
  await page.goto(`${base}/dashboard/jobs?state=discarded`);
  const row = page.locator(`tr[data-job="${id}"]`);
  await row.waitFor();
  assert.match(await row.locator('td.err').textContent(), /no template named/);
  await shot('jobs-discarded');
  await row.locator('a').first().click();
  await page.waitForURL(`${base}/dashboard/jobs/${id}`);
  assert.equal(await page.textContent('#job-state'), 'discarded');
  await page.click('button:has-text("Retry")');
  await page.waitForURL(/notice=/);
  assert.match(await page.textContent('.notice'), /pending again/);
  await reloadUntil(`${base}/dashboard/jobs/${id}`, 'the job to finish', async () =>
    (await page.textContent('#job-state')) === 'done');
  assert.equal(await page.locator('button:has-text("Retry")').count(), 0, 'a done job is not rerun from here');
  await shot('job-done');
  await page.goto(`${base}/dashboard/mail`);
  await shot('mail-send-log');
});

test('a quarantined message opens with its reason', { timeout: 120_000 }, async () => {
  const id = env('DKL_QUARANTINED');
  await page.goto(`${base}/dashboard/mail/inbox?quarantined=1`);
  await page.locator(`tr[data-message="${id}"] a`).click();
  await page.waitForURL(`${base}/dashboard/mail/messages/${id}`);
  assert.match(await page.textContent('.error'), /Quarantined: too large/);
  assert.match(await page.textContent('#message-headers'), /Subject:/i);
  await shot('message-quarantined');
});

test("a message's HTML with <script> cannot run in the page", { timeout: 120_000 }, async () => {
  const id = env('DKL_SCRIPT_MESSAGE');
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  const errors = [];
  page.on('console', (m) => errors.push(m.text()));
  await page.goto(`${base}/dashboard/mail/messages/${id}`);
  const frameElement = await page.waitForSelector('iframe.message');
  assert.equal(await frameElement.getAttribute('sandbox'), '', 'sandboxed without allow-scripts');
  const frame = await frameElement.contentFrame();
  await frame.waitForLoadState();
  assert.match(await frame.textContent('body'), /Hallo/, 'the message is shown');
  await page.waitForTimeout(500);
  assert.equal(await frame.evaluate(() => document.body.dataset.ran ?? null), null, 'the script did not run in the frame');
  assert.notEqual(await page.title(), 'pwned', 'nor in the page');
  assert.deepEqual(dialogs, [], 'no alert');
  await shot('message-html');
});

test('actions without the CSRF token, without login, or from another site are refused', { timeout: 120_000 }, async () => {
  const id = env('DKL_FAILED_JOB');
  const action = `${base}/dashboard/jobs/${id}/cancel`;
  // Logged in, but no token in the form.
  const noToken = await context.request.post(action, { form: {}, headers: { origin: base } });
  assert.equal(noToken.status(), 403);
  // Not logged in at all.
  const stranger = await browser.newContext();
  const anonymous = await stranger.request.post(action, { form: { csrf: 'x'.repeat(64) } });
  assert.equal(anonymous.status(), 401);
  await stranger.close();
  // Another site's page posting a form with a stolen token: the strict
  // cookie is not sent along, and the origin is not ours.
  await page.goto(`${base}/dashboard`);
  const csrf = await page.getAttribute('input[name=csrf]', 'value');
  const evil = await context.newPage();
  await evil.setContent(`<form method="post" action="${action}"><input name="csrf" value="${csrf}"><button>go</button></form>`);
  const [response] = await Promise.all([
    evil.waitForResponse((r) => r.url() === action),
    evil.click('button'),
  ]);
  assert.ok([401, 403].includes(response.status()), `refused (${response.status()})`);
  await evil.close();
  // A GET never acts.
  const get = await context.request.get(action);
  assert.equal(get.status(), 405);
  await page.goto(`${base}/dashboard/audit`);
  // The refused login and the post without a token; requests without a
  // session are only logged (anyone could fill the table with them).
  assert.ok(await page.locator('#audit .state.refused').count() >= 2, 'refusals are audited');
  await shot('audit');
});

test('screenshots of the main pages, also on a phone', { timeout: 120_000 }, async () => {
  for (const [name, path] of [
    ['schedules', '/dashboard/schedules'],
    ['jobs', '/dashboard/jobs'],
    ['mail-inbox', '/dashboard/mail/inbox'],
    ['mail-bounces', '/dashboard/mail/bounces'],
  ]) {
    const r = await page.goto(`${base}${path}`);
    assert.equal(r.status(), 200, path);
    await shot(name);
  }
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, storageState: await context.storageState() });
  const p = await phone.newPage();
  await p.goto(`${base}/dashboard`);
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `no sideways scrolling of the page on a phone (${overflow}px)`);
  await shot('overview-phone', p);
  await phone.close();
});

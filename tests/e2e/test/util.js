// Shared helpers of the e2e specs: the skiff CLI as the other side, hashes, the window,
// real XDND drags, screenshots.
import { execFileSync, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const here = path.dirname(fileURLToPath(import.meta.url));
const target = process.env.CARGO_TARGET_DIR ?? path.resolve(here, "../../../target");
export const SKIFF = process.env.SKIFF_BIN ?? path.join(target, "debug/skiff");
export const SKIFF_SIGNAL = process.env.SKIFF_SIGNAL_BIN ?? path.join(target, "debug/skiff-signal");
export const WORK = process.env.E2E_WORK ?? fs.mkdtempSync(path.join(os.tmpdir(), "skiff-e2e-"));
// The app's built-in server keeps its devices in this named space (`skiff_core::lan::LAN_SPACE`).
export const LAN_SPACE = "skiff-lan";
export const OUT = process.env.E2E_OUT ?? path.join(WORK, "output");
export const DOWNLOADS = process.env.E2E_DOWNLOADS ?? path.join(WORK, "downloads");
export const WINDOW_TITLE = "Skiff";
fs.mkdirSync(OUT, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const xdo = (...args) => execFileSync("xdotool", args.map(String), { encoding: "utf8" }).trim();

export function sha256(file) {
  return crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

/** sha256 of a large file, streamed. */
export async function sha256Stream(file) {
  const h = crypto.createHash("sha256");
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 8 << 20 })) h.update(chunk);
  return h.digest("hex");
}

/** Relative path → sha256 of every file under dir (sorted). */
export function tree(dir) {
  const out = {};
  const walk = (d, rel) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else out[r] = sha256(p);
    }
  };
  walk(dir, "");
  return Object.fromEntries(Object.entries(out).sort());
}

export function freshDir(name) {
  const d = path.join(WORK, name);
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Runs the skiff CLI; resolves with its JSON events and exit code. */
export function skiff(args, { env = {}, onEvent } = {}) {
  const child = spawn(SKIFF, ["--json", ...args], {
    env: { ...process.env, SKIFF_LOG: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const events = [];
  let buf = "";
  let stderr = "";
  child.stdout.on("data", (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const e = JSON.parse(line);
        events.push(e);
        onEvent?.(e);
      } catch {
        /* not JSON */
      }
    }
  });
  child.stderr.on("data", (d) => (stderr += d));
  const done = new Promise((resolve) => child.on("exit", (code) => resolve({ code, events, stderr })));
  return { child, events, done, stderr: () => stderr };
}

/** Waits until `events` has one matching `pred`. */
export async function waitEvent(events, pred, ms = 30000) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const e = events.find(pred);
    if (e) return e;
    await sleep(100);
  }
  throw new Error(`no matching event in ${ms} ms; got ${JSON.stringify(events).slice(0, 500)}`);
}

/** Waits for the app window and its first paint. */
export async function appReady() {
  const nav = await $("#nav-send");
  await nav.waitForDisplayed({ timeout: 30000 });
}

export async function go(screen) {
  await $(`#nav-${screen}`).click();
  await sleep(150);
}

/** The signaling URL the app uses now (the rail footer's tooltip). */
export async function appSignalUrl() {
  const el = await $("#rail-network");
  return waitFor(async () => {
    const t = await el.getAttribute("title");
    return /^wss?:\/\//.test(t ?? "") && t;
  }, 20000, "the app's signaling URL");
}

/** A screenshot of the app window, taken from the X server (ImageMagick's import). */
export async function screenshot(name) {
  await sleep(400);
  const { win } = windowOrigin();
  execFileSync("/usr/bin/import", ["-window", win, path.join(OUT, `${name}.png`)]);
}

/** Window origin on the X screen (no window manager: no decorations). */
export function windowOrigin() {
  const win = xdo("search", "--onlyvisible", "--name", `^${WINDOW_TITLE}$`).split("\n")[0];
  const geo = xdo("getwindowgeometry", "--shell", win);
  return { win, x: Number(/X=(\d+)/.exec(geo)[1]), y: Number(/Y=(\d+)/.exec(geo)[1]) };
}

/** A real OS drag (XDND) of `files` from dragsrc.py onto the element `selector`. */
export async function dragOnto(selector, files) {
  const src = spawn("/usr/bin/python3", [path.join(here, "dragsrc.py"), "1100", "600", ...files], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    await new Promise((res, rej) => {
      src.stdout.on("data", (d) => String(d).includes("ready") && res());
      src.on("exit", (c) => rej(new Error(`dragsrc exited ${c}`)));
    });
    await sleep(300);
    const { x: wx, y: wy } = windowOrigin();
    const el = await $(selector);
    const r = await browser.getElementRect(el.elementId);
    const tx = Math.round(wx + r.x + r.width / 2);
    const ty = Math.round(wy + r.y + r.height / 2);
    xdo("mousemove", 1200, 700);
    await sleep(200);
    xdo("mousedown", 1);
    await sleep(200);
    for (let i = 1; i <= 20; i++) {
      xdo("mousemove", Math.round(1200 + ((tx - 1200) * i) / 20), Math.round(700 + ((ty - 700) * i) / 20));
      await sleep(40);
    }
    await sleep(300);
    xdo("mousemove", tx + 3, ty + 2);
    await sleep(300);
    xdo("mouseup", 1);
    await sleep(500);
  } finally {
    src.kill();
  }
}

/** The app's process id, from its window (for a real crash: kill -9). */
export function appPid() {
  const { win } = windowOrigin();
  return Number(xdo("getwindowpid", win));
}

export async function waitFor(pred, ms = 30000, what = "condition") {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    try {
      last = await pred();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

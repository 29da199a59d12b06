// WebdriverIO for the Skiff desktop app: tauri-driver (port 4444) → WebKitWebDriver → the
// real app binary. Xvfb and tauri-driver are started by run.sh, which owns their PIDs.
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const target = process.env.CARGO_TARGET_DIR ?? path.resolve(here, "../../target");
const application = process.env.TAURI_APP ?? path.join(target, "debug/skiff-app");

export const config = {
  runner: "local",
  hostname: "127.0.0.1",
  port: Number(process.env.TAURI_DRIVER_PORT ?? 4444),
  specs: ["./test/*.e2e.js"],
  // One X pointer and one app data dir: specs run one after another, in name order.
  maxInstances: 1,
  capabilities: [
    {
      maxInstances: 1,
      // no browserName: wdio must not try to download or manage a browser driver
      "tauri:options": { application },
    },
  ],
  logLevel: "warn",
  reporters: ["spec"],
  framework: "mocha",
  mochaOpts: { ui: "bdd", timeout: 180000 },
  connectionRetryTimeout: 60000,
  connectionRetryCount: 1,
};

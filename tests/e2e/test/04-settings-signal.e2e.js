// Scenario 4: set the signaling URL in Settings → Test connection says OK (and what is
// wrong for a bad URL) → the next transfer uses that server.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { DOWNLOADS, SKIFF_SIGNAL, WORK, appReady, appSignalUrl, freshDir, go, screenshot, sha256, skiff, waitEvent, waitFor } from "./util.js";

function freePort() {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function testUrl(url) {
  await $("#signal-url").clearValue();
  await $("#signal-url").setValue(url);
  await $("#test-connection").click();
  const probe = await $("#probe");
  await probe.waitForDisplayed({ timeout: 20000 });
  return { ok: (await probe.getAttribute("data-ok")) === "true", text: await probe.getText() };
}

describe("a signaling server set in Settings", () => {
  let server;
  let url;
  before(async () => {
    await appReady();
    const port = await freePort();
    url = `ws://127.0.0.1:${port}/ws`;
    server = spawn(SKIFF_SIGNAL, ["--listen", `127.0.0.1:${port}`, "--turn-url", "turn:127.0.0.1:3478"], {
      env: { ...process.env, SKIFF_TURN_SECRET: "e2e-secret" },
      stdio: "ignore",
    });
    await waitFor(
      () => new Promise((res) => net.connect(port, "127.0.0.1").on("connect", function () { this.destroy(); res(true); }).on("error", () => res(false))),
      10000,
      "skiff-signal to listen",
    );
  });
  after(async () => {
    // Back to the built-in server for the specs that follow.
    await go("settings");
    await $("#signal-builtin").click();
    await $("#settings-save").click();
    await waitFor(async () => (await appSignalUrl()) !== url, 10000, "the built-in server again");
    server?.kill();
  });

  it("Test connection says what is wrong with bad addresses", async () => {
    await go("settings");
    await $("#signal-custom").click();
    await $("#signal-url").setValue("https://signal.example.org/ws");
    await $("#test-connection").click();
    await waitFor(async () => (await $("#signal-url-problem").getText()).includes("wss://"), 5000, "the inline problem");
    const refused = await testUrl("ws://127.0.0.1:1/ws");
    assert.equal(refused.ok, false);
    assert.match(refused.text, /FAIL/);
    assert.match(refused.text, /Nothing answers on port 1 of 127\.0\.0\.1/);
    await screenshot("settings-test-fail-light");
  });

  it("Test connection says OK for a real server, and the setting applies and persists", async () => {
    const good = await testUrl(url);
    assert.equal(good.ok, true, good.text);
    assert.match(good.text, /OK\s+Reachable/);
    assert.match(good.text, /Protocol version \d+ \(compatible\)/);
    assert.match(good.text, /OK\s+Relay credentials\s+Received for turn:127\.0\.0\.1:3478/);
    await screenshot("settings-test-ok-light");
    await $("#settings-save").click();
    await waitFor(async () => (await $("#settings-saved").getText()).startsWith("Saved"), 10000, "Saved");
    assert.equal(await appSignalUrl(), url);
    const toml = fs.readFileSync(path.join(process.env.SKIFF_DATA_DIR, "settings.toml"), "utf8");
    assert.match(toml, new RegExp(`signal_url = "${url.replace(/[/.]/g, "\\$&")}"`));
  });

  it("the next transfer meets its sender on that server", async () => {
    const src = freshDir("custom-src");
    const file = path.join(src, "via-custom.bin");
    fs.writeFileSync(file, crypto.randomBytes(400_000));
    // The sender allocates its code on the custom server: the app can only claim it there.
    const sender = skiff(["--data-dir", path.join(WORK, "cli-send-4"), "send", "--signal", url, file]);
    const { code } = await waitEvent(sender.events, (e) => e.event === "code");
    await go("receive");
    await $("#code-input").setValue(code);
    await waitFor(async () => $("#receive-get").isEnabled(), 5000, "Get to be enabled");
    await $("#receive-get").click();
    await $("#offer-accept").waitForDisplayed({ timeout: 30000 });
    await $("#offer-accept").click();
    const res = await sender.done;
    assert.equal(res.code, 0, `skiff send failed: ${res.stderr}`);
    await waitFor(() => fs.existsSync(path.join(DOWNLOADS, "via-custom.bin")), 20000, "the file");
    assert.equal(sha256(path.join(DOWNLOADS, "via-custom.bin")), sha256(file));
  });
});

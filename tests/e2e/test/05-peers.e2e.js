// Scenario 5: a listening `skiff` peer appears in Peers (and leaves again), the app sends
// to it from its tile, and `skiff send --to <this app>` shows the request dialog with the
// same four words as the CLI; Accept (+ Trust) delivers identical bytes.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { DOWNLOADS, LAN_SPACE, WORK, appReady, appSignalUrl, freshDir, go, screenshot, sha256, skiff, waitEvent, waitFor } from "./util.js";

/** The app's own peer list (as the Peers screen has it). */
const appPeers = () =>
  browser.executeAsync((done) => {
    window.__TAURI_INTERNALS__.invoke("get_peers").then(done, (e) => done({ error: e }));
  });

describe("peers", () => {
  before(appReady);

  it("a skiff peer in the same space appears by name, and disappears when it stops", async () => {
    const url = await appSignalUrl();
    // `skiff peers --watch` keeps a presence connection, as `skiff listen` will.
    const peer = skiff(["peers", "--watch", "--signal", url, "--space", LAN_SPACE, "--name", "cli-listener"]);
    try {
      await go("peers");
      await waitFor(
        async () => (await $$("#peer-list .peer-name").map((e) => e.getProperty("textContent"))).includes("cli-listener"),
        20000,
        "cli-listener in Peers",
      );
      assert.match(await $("#peers-status").getText(), /Online/);
      await screenshot("peers-light");
    } finally {
      peer.child.kill();
    }
    await waitFor(
      async () => !(await $$("#peer-list .peer-name").map((e) => e.getProperty("textContent"))).includes("cli-listener"),
      20000,
      "cli-listener to leave",
    );
  });

  it("a `skiff listen` peer appears, and sending to it from its tile delivers the bytes", async () => {
    const url = await appSignalUrl();
    const dest = freshDir("listen-out");
    const listener = skiff(["--data-dir", path.join(WORK, "cli-listen"), "listen", "--signal", url, "--space", LAN_SPACE, "--dir", dest, "--yes"]);
    try {
      const { device } = await waitEvent(listener.events, (e) => e.event === "listening", 20000);
      await go("peers");
      const tile = await $(`#peer-list li.peer[data-device="${device}"]`);
      await tile.waitForExist({ timeout: 20000 });
      await screenshot("peers-listener-light");
      const src = freshDir("to-peer");
      const file = path.join(src, "to the listener.bin");
      fs.writeFileSync(file, crypto.randomBytes(700_000));
      // What the tile's "Send files" does once the file dialog returns the paths.
      const share = await browser.executeAsync((d, p, done) => {
        window.__TAURI_INTERNALS__.invoke("send_to_peer", { deviceId: d, paths: [p] }).then(done, (e) => done({ error: e }));
      }, device, file);
      assert.ok(!share.error, JSON.stringify(share.error));
      assert.equal(share.to, device);
      await waitFor(() => fs.existsSync(path.join(dest, "to the listener.bin")), 30000, "the file at the listener");
      await waitFor(async () => {
        try {
          return sha256(path.join(dest, "to the listener.bin")) === sha256(file);
        } catch {
          return false;
        }
      }, 30000, "identical bytes at the listener");
    } finally {
      listener.child.kill();
    }
  });

  it("`skiff send --to` this app shows the request with the CLI's phrase; Accept + Trust gives identical bytes", async () => {
    const url = await appSignalUrl();
    const peers = await waitFor(async () => {
      const p = await appPeers();
      return p.status === "online" && p.meId && p;
    }, 20000, "the app online under its device key");
    assert.match(peers.meId, /^[0-9a-f]{64}$/);
    const src = freshDir("from-cli");
    const name = "from the cli.bin";
    const file = path.join(src, name);
    fs.writeFileSync(file, crypto.randomBytes(900_000));
    const cliDir = path.join(WORK, "cli-to-app");
    const sender = skiff(["--data-dir", cliDir, "send", "--signal", url, "--space", LAN_SPACE, "--to", peers.meId, file]);
    try {
      const verify = await waitEvent(sender.events, (e) => e.event === "verify", 30000);
      const dialog = await $("#request");
      try {
        await dialog.waitForDisplayed({ timeout: 20000 });
      } catch (e) {
        await screenshot("request-dialog-missing");
        const pending = await browser.executeAsync((done) => {
          window.__TAURI_INTERNALS__.invoke("pending_requests").then(done, (err) => done({ error: err }));
        });
        throw new Error(`${e.message}; pending ${JSON.stringify(pending).slice(0, 300)}; CLI ${JSON.stringify(sender.events).slice(0, 600)} ${sender.stderr().slice(-600)}`);
      }
      const phrase = await $("#request-phrase").getAttribute("data-phrase");
      assert.equal(phrase, verify.phrase, "both screens show the same words");
      assert.match(phrase, /^[a-z]+(-[a-z]+){3}$/);
      assert.equal(verify.trusted, false);
      assert.match(await $("#request-summary").getText(), /1 file/);
      // Names come in pages, fetched once the list is on screen.
      await screenshot("request-dialog-light");
      await waitFor(
        async () => (await $$("#request-entries .entry-name").map((e) => e.getProperty("textContent"))).includes(name),
        10000,
        "the offered name",
      );
      assert.match(await $("#request-title").getText(), /wants to send you/);
      await screenshot("request-dialog-light");
      await $("#request-trust").click();
      await $("#request-accept").click();
      await dialog.waitForExist({ timeout: 10000, reverse: true });
      const got = path.join(DOWNLOADS, name);
      await waitFor(async () => {
        try {
          return sha256(got) === sha256(file);
        } catch {
          return false;
        }
      }, 30000, "identical bytes in the app's download folder");
      const { code } = await sender.done;
      assert.equal(code, 0, sender.stderr());
    } finally {
      sender.child.kill();
    }

    // Trusted now: the next request says so (and still asks); Decline reaches the CLI.
    const again = skiff(["--data-dir", cliDir, "send", "--signal", url, "--space", LAN_SPACE, "--to", peers.meId, file]);
    try {
      await $("#request").waitForDisplayed({ timeout: 30000 });
      assert.equal(await $("#request-trusted").getText(), "Trusted device");
      await screenshot("request-dialog-trusted");
      await $("#request-decline").click();
      const { code, events } = await again.done;
      assert.notEqual(code, 0);
      assert.ok(events.some((e) => e.state === "declined" || e.kind === "declined"), JSON.stringify(events).slice(0, 400));
    } finally {
      again.child.kill();
    }
  });
});

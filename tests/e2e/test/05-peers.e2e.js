// Scenario 5: a listening `skiff` peer appears in Peers (and leaves again).
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { WORK, appReady, appSignalUrl, freshDir, go, screenshot, sha256, skiff, waitEvent, waitFor } from "./util.js";

describe("peers", () => {
  before(appReady);

  it("a skiff peer in the same space appears by name, and disappears when it stops", async () => {
    const url = await appSignalUrl();
    // `skiff peers --watch` keeps a presence connection, as `skiff listen` will.
    const peer = skiff(["peers", "--watch", "--signal", url, "--name", "cli-listener"]);
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
    const listener = skiff(["--data-dir", path.join(WORK, "cli-listen"), "listen", "--signal", url, "--dir", dest, "--yes"]);
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
});

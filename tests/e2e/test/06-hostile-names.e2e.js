// Scenario 6: a hostile file name from the CLI renders as plain text, and no script runs.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { DOWNLOADS, LAN_SPACE, WORK, appReady, appSignalUrl, dragOnto, freshDir, go, screenshot, skiff, waitEvent, waitFor } from "./util.js";

const HOSTILE = "<img src=x onerror=alert(1)>.txt";
// The engine's sanitiser names the local file: `<` and `>` are not portable in names.
const LOCAL = "_img src=x onerror=alert(1)_.txt";

describe("hostile names", () => {
  before(appReady);

  it("an offered name like <img onerror> is shown literally and saved as a file", async () => {
    const src = freshDir("hostile-src");
    const file = path.join(src, HOSTILE);
    fs.writeFileSync(file, "not html\n");
    const url = await appSignalUrl();
    const sender = skiff(["--data-dir", path.join(WORK, "cli-send-6"), "send", "--signal", url, file]);
    const { code } = await waitEvent(sender.events, (e) => e.event === "code");
    await go("receive");
    await $("#code-input").setValue(code);
    await waitFor(async () => $("#receive-get").isEnabled(), 5000, "Get to be enabled");
    await $("#receive-get").click();
    await $("#offer").waitForDisplayed({ timeout: 30000 });
    const shown = await $("#offer-entries .entry-name");
    await shown.waitForExist({ timeout: 5000 });
    assert.equal(await shown.getProperty("textContent"), LOCAL);
    assert.equal(await browser.execute(() => document.querySelectorAll("img").length), 0);
    await screenshot("receive-hostile-light");
    await $("#offer-accept").click();
    const res = await sender.done;
    assert.equal(res.code, 0, `skiff send failed: ${res.stderr}`);
    await waitFor(() => fs.existsSync(path.join(DOWNLOADS, LOCAL)), 20000, "the file");
    assert.equal(fs.readFileSync(path.join(DOWNLOADS, LOCAL), "utf8"), "not html\n");
    await go("transfers");
    assert.equal(await browser.execute(() => document.querySelectorAll("img").length), 0);
    // No alert() ran: WebDriver has no open dialog.
    await assert.rejects(() => browser.getAlertText());
  });

  it("a peer named like markup, from the CLI, is shown literally in Peers", async () => {
    const url = await appSignalUrl();
    const peer = skiff(["peers", "--watch", "--signal", url, "--space", LAN_SPACE, "--name", HOSTILE]);
    try {
      await go("peers");
      await waitFor(
        async () => (await $$("#peer-list .peer-name").map((e) => e.getProperty("textContent"))).includes(HOSTILE),
        20000,
        "the hostile peer name as text",
      );
      assert.equal(await browser.execute(() => document.querySelectorAll("img").length), 0);
      await screenshot("peers-hostile-light");
    } finally {
      peer.child.kill();
    }
  });

  it("a dropped file named like markup is listed literally on the share card", async () => {
    const src = freshDir("hostile-drop");
    const file = path.join(src, HOSTILE);
    fs.writeFileSync(file, "x\n");
    await go("send");
    if (await $("#send-more").isExisting()) await $("#send-more").click();
    await dragOnto("#dropzone", [file]);
    const item = await $("#share-items .item-name");
    await item.waitForExist({ timeout: 20000 });
    assert.equal(await item.getProperty("textContent"), HOSTILE);
    assert.equal(await browser.execute(() => document.querySelectorAll("img").length), 0);
    await screenshot("send-hostile-light");
    await $("#cancel-share").click();
  });
});

// Scenario 2: type a code from `skiff send` into Receive → accept → byte-identical files.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { DOWNLOADS, WORK, appReady, appSignalUrl, freshDir, go, screenshot, sha256, skiff, waitEvent, waitFor } from "./util.js";

describe("receive with a code", () => {
  before(appReady);

  it("explains a malformed code before any network call", async () => {
    await go("receive");
    await $("#code-input").setValue("river olive kayak");
    await waitFor(async () => (await $("#code-message").getText()).includes("starts with a number"), 5000, "the format message");
    assert.equal(await $("#receive-get").isEnabled(), false);
    await screenshot("receive-invalid-light");
    await $("#code-input").clearValue();
  });

  it("accepts an offer from skiff send and gets the same bytes", async () => {
    const src = freshDir("recv-src");
    const file = path.join(src, "report 2024.pdf");
    fs.writeFileSync(file, crypto.randomBytes(5 * 1024 * 1024));
    fs.writeFileSync(path.join(src, "small.txt"), "tiny\n");
    const url = await appSignalUrl();
    const sender = skiff(["--data-dir", path.join(WORK, "cli-send-2"), "send", "--signal", url, file, path.join(src, "small.txt")]);
    const { code } = await waitEvent(sender.events, (e) => e.event === "code");
    await go("receive");
    await $("#code-input").setValue(code);
    await waitFor(async () => $("#receive-get").isEnabled(), 5000, "Get to be enabled");
    await $("#receive-get").click();
    await $("#offer").waitForDisplayed({ timeout: 30000 });
    assert.match(await $("#offer-summary").getText(), /2 files · 5\.2 MB/);
    const names = await waitFor(async () => {
      const got = [...(await $$("#offer-entries .entry-name").map((e) => e.getProperty("textContent")))].sort();
      return got.length === 2 && got;
    }, 10000, "both names in the offer");
    assert.deepEqual(names, ["report 2024.pdf", "small.txt"]);
    await screenshot("receive-offer-light");
    await $("#offer-accept").click();
    const res = await sender.done;
    assert.equal(res.code, 0, `skiff send failed: ${res.stderr}`);
    await waitFor(() => fs.existsSync(path.join(DOWNLOADS, "report 2024.pdf")), 20000, "the received file");
    assert.equal(sha256(path.join(DOWNLOADS, "report 2024.pdf")), sha256(file));
    assert.equal(fs.readFileSync(path.join(DOWNLOADS, "small.txt"), "utf8"), "tiny\n");
    await go("transfers");
    await screenshot("transfers-light");
  });
});

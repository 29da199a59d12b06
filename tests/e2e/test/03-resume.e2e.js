// Scenario 3: kill the app (SIGKILL) mid-download, start it again, click Resume → the
// download completes from its checkpoint, byte-identical.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { DOWNLOADS, WORK, appPid, appReady, appSignalUrl, freshDir, go, screenshot, sha256Stream, skiff, sleep, waitEvent, waitFor } from "./util.js";

const SIZE = 384 * 1024 * 1024; // large enough to still be running when the app is killed

async function progressOf(selector) {
  const bar = await $(`${selector} [role=progressbar]`);
  return Number(await bar.getAttribute("aria-valuenow"));
}

describe("resume after the app was killed", () => {
  before(appReady);

  it("continues an interrupted download after a restart", async function () {
    this.timeout(420000);
    const src = freshDir("resume-src");
    const file = path.join(src, "big-resume.bin");
    // Random head and tail around a sparse middle: cheap to make, still checks every byte.
    const fd = fs.openSync(file, "w");
    fs.writeSync(fd, Buffer.from("head".repeat(1 << 18)));
    fs.ftruncateSync(fd, SIZE);
    fs.writeSync(fd, Buffer.from("tail".repeat(1 << 10)), 0, 4096, SIZE - 4096);
    fs.closeSync(fd);
    const url = await appSignalUrl();
    const sender = skiff(["--data-dir", path.join(WORK, "cli-send-3"), "send", "--signal", url, file]);
    const { code } = await waitEvent(sender.events, (e) => e.event === "code");
    await go("receive");
    await $("#code-input").setValue(code);
    await waitFor(async () => $("#receive-get").isEnabled(), 5000, "Get to be enabled");
    await $("#receive-get").click();
    await $("#offer-accept").waitForDisplayed({ timeout: 30000 });
    await $("#offer-accept").click();
    await go("transfers");
    const row = await waitFor(async () => {
      const rows = await $$("article.transfer[data-running=true][data-state=transferring]");
      return rows.length ? `article.transfer[data-id="${await rows[0].getAttribute("data-id")}"]` : null;
    }, 30000, "the running download");
    await waitFor(async () => (await progressOf(row)) >= 1, 60000, "some progress");
    const before = await progressOf(row);
    assert.ok(before < 100, `too fast to interrupt (${before} %)`);
    const id = row.match(/data-id="([^"]+)"/)[1];

    process.kill(appPid(), "SIGKILL"); // a crash: no chance to save anything more
    await sleep(500);
    try {
      await browser.reloadSession();
    } catch {
      await browser.reloadSession();
    }
    await appReady();
    await go("transfers");
    const resume = await $(`article.transfer[data-id="${id}"] button.resume`);
    await resume.waitForDisplayed({ timeout: 20000 });
    assert.match(await resume.getText(), /^Resume \(.+ done\)$/);
    await screenshot("transfers-interrupted-light");
    await resume.click();
    const res = await sender.done;
    assert.equal(res.code, 0, `skiff send failed: ${res.stderr}`);
    await waitFor(
      async () => (await $(`article.transfer[data-id="${id}"]`).getAttribute("data-state")) === "completed",
      60000,
      "completed",
    );
    const got = path.join(DOWNLOADS, "big-resume.bin");
    assert.equal(fs.statSync(got).size, SIZE);
    assert.equal(await sha256Stream(got), await sha256Stream(file));
    fs.rmSync(got);
    fs.rmSync(file);
  });
});

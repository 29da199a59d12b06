// Scenario 1: a real OS drag-and-drop of a file and of a folder onto the window → a code
// appears → `skiff receive CODE` gets byte-identical files.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { WORK, appReady, appSignalUrl, dragOnto, freshDir, screenshot, sha256, skiff, tree, waitFor } from "./util.js";

async function codeShown() {
  return waitFor(
    async () => {
      const el = await $("#share-code");
      return (await el.isExisting()) && (await el.getText());
    },
    30000,
    "the share code",
  );
}

async function receiveWithCli(code, name) {
  const url = await appSignalUrl();
  assert.match(url, /^ws:\/\/127\.0\.0\.1:\d+\/ws$/, "the built-in server is in use");
  const dest = freshDir(`${name}-out`);
  const r = skiff(["--data-dir", path.join(WORK, `cli-${name}`), "receive", "--signal", url, "--dir", dest, "--yes"], {
    env: { SKIFF_CODE: code },
  });
  const res = await r.done;
  assert.equal(res.code, 0, `skiff receive failed: ${res.stderr}`);
  return dest;
}

describe("send by drag and drop", () => {
  before(appReady);

  it("a dropped file gets a code, and skiff receive gets the same bytes", async () => {
    const src = freshDir("dnd-file");
    const file = path.join(src, "drop ü me.bin");
    fs.writeFileSync(file, crypto.randomBytes(3 * 1024 * 1024 + 17));
    await dragOnto("#dropzone", [file]);
    const code = await codeShown();
    assert.match(code, /^\d+-[a-z]+-[a-z]+-[a-z]+$/);
    assert.equal(await $("#share-total").getText(), "1 file · 3.1 MB");
    await screenshot("send-code-light");
    const dest = await receiveWithCli(code, "dnd-file");
    assert.equal(sha256(path.join(dest, "drop ü me.bin")), sha256(file));
    await waitFor(async () => (await $("#share-state").getText()) === "Completed", 20000, "Completed on the share card");
    await screenshot("send-completed-light");
  });

  it("a dropped folder gets a code, and skiff receive gets the same tree", async () => {
    const src = freshDir("dnd-folder");
    const root = path.join(src, "Photos 2024");
    fs.mkdirSync(path.join(root, "trip", "day 1"), { recursive: true });
    fs.writeFileSync(path.join(root, "notes.txt"), "hello\n");
    fs.writeFileSync(path.join(root, "trip", "a.jpg"), crypto.randomBytes(200_000));
    fs.writeFileSync(path.join(root, "trip", "day 1", "b.jpg"), crypto.randomBytes(1_500_000));
    fs.writeFileSync(path.join(root, "empty.dat"), "");
    await $("#send-more").click();
    await dragOnto("#dropzone", [root]);
    const code = await codeShown();
    assert.equal(await $("#share-total").getText(), "4 files · 1.7 MB");
    const dest = await receiveWithCli(code, "dnd-folder");
    assert.deepEqual(tree(path.join(dest, "Photos 2024")), tree(root));
  });
});

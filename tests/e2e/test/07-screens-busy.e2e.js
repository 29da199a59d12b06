// Every screen with content, in light and in dark (for looking at).
import path from "node:path";
import fs from "node:fs";
import crypto from "node:crypto";
import { appReady, dragOnto, freshDir, go, screenshot, waitFor } from "./util.js";

async function setTheme(theme) {
  await go("settings");
  await $(`#theme-${theme}`).click();
  await $("#settings-save").click();
  await waitFor(async () => (await $("#settings-saved").getText()).startsWith("Saved"), 10000, "Saved");
}

describe("screens with content", () => {
  before(appReady);

  it("light and dark", async () => {
    const src = freshDir("shots");
    const f = path.join(src, "holiday photos.zip");
    fs.writeFileSync(f, crypto.randomBytes(2_000_000));
    await go("send");
    if (await $("#send-more").isExisting()) await $("#send-more").click();
    await dragOnto("#dropzone", [f]);
    await waitFor(async () => (await $("#share-code").isExisting()) && (await $("#share-total").getText()) === "1 file · 2.0 MB", 20000, "the code for the dropped file");
    for (const theme of ["light", "dark"]) {
      await setTheme(theme);
      await go("send");
      await $("#share-code").waitForDisplayed({ timeout: 10000 });
      await screenshot(`send-${theme}`);
      await go("receive");
      await screenshot(`receive-${theme}`);
      await go("transfers");
      await screenshot(`transfers-${theme}`);
      await go("peers");
      await screenshot(`peers-${theme}`);
      await go("settings");
      await screenshot(`settings-${theme}`);
    }
    await setTheme("system");
  });
});

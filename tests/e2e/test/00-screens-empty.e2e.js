// Every screen before anything happened (empty states), in light and in dark.
import { appReady, go, screenshot } from "./util.js";

async function setTheme(theme) {
  await go("settings");
  await $(`#theme-${theme}`).click();
  await $("#settings-save").click();
  await $("#settings-saved").waitUntil(async function () {
    return (await this.getText()).startsWith("Saved");
  });
}

describe("empty screens", () => {
  before(appReady);

  it("has a window titled Skiff", async () => {
    const title = await browser.getTitle();
    if (!title.includes("Skiff")) throw new Error(`title is ${title}`);
  });

  for (const theme of ["light", "dark"]) {
    it(`shows every screen's empty state (${theme})`, async () => {
      await setTheme(theme);
      for (const s of ["send", "receive", "transfers", "peers", "settings"]) {
        await go(s);
        await screenshot(`empty-${s}-${theme}`);
      }
      await $("#transfers-empty").isExisting();
    });
  }

  after(async () => setTheme("system"));
});

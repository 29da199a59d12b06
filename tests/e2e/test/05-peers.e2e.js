// Scenario 5: a listening `skiff` peer appears in Peers (and leaves again).
import assert from "node:assert/strict";
import { appReady, appSignalUrl, go, screenshot, skiff, waitFor } from "./util.js";

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

  // Blocked: the engine has no peer-list sends yet (`skiff listen`, Node send-to-peer).
  // The app's "Send files" on a peer tile reports "not available" until then.
  it.skip("sends files to a listening peer (needs the engine's peer sends)", () => {});
});

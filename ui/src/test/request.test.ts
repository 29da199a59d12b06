// The incoming request dialog (a peer-list send to this device) against backend.mock.ts:
// sender, phrase, paged names, Trust, Accept / Decline, hostile names, Esc.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen, waitFor, cleanup } from "@testing-library/svelte";

vi.mock("../lib/backend", () => import("../lib/backend.mock"));

import * as backend from "../lib/backend.mock";
import { mock } from "../lib/backend.mock";
import { app } from "../lib/app.svelte";
import IncomingDialog from "../lib/IncomingDialog.svelte";
import type { Request } from "../lib/types";

const HOSTILE = "<img src=x onerror=alert(1)>";

function request(over: Partial<Request> = {}, files = 3): Request {
  return {
    offer: {
      id: "r1",
      sender: "laptop",
      files,
      dirs: 0,
      total: files * 1000,
      entryCount: files,
      downloadDir: "/home/u/Downloads",
      freeBytes: 10_000_000,
    },
    peer: "laptop",
    device: "d".repeat(64),
    phrase: "olive-river-kayak-mango",
    trusted: false,
    ...over,
  };
}

beforeEach(() => {
  vi.clearAllMocks();
  mock.entries = [];
  app.requests = [];
  app.transfers = [];
});
afterEach(() => cleanup());

describe("incoming request dialog", () => {
  it("shows the sender, the four words, the totals and the names", async () => {
    mock.entries = [
      { path: "a.txt", size: 1000, dir: false },
      { path: "b.txt", size: 1000, dir: false },
      { path: "c.txt", size: 1000, dir: false },
    ];
    render(IncomingDialog, { request: request() });
    expect(screen.getByRole("dialog").getAttribute("aria-modal")).toBe("true");
    expect(document.getElementById("request-sender")!.textContent).toBe("laptop");
    const phrase = document.getElementById("request-phrase")!;
    expect(phrase.dataset.phrase).toBe("olive-river-kayak-mango");
    expect([...phrase.querySelectorAll(".word")].map((w) => w.textContent)).toEqual(["olive", "river", "kayak", "mango"]);
    expect(screen.getByText("Do both screens show these words?")).toBeTruthy();
    expect(document.getElementById("request-summary")!.textContent).toContain("3 files");
    await waitFor(() => expect(document.querySelectorAll("#request-entries .entry-name").length).toBe(3));
    expect(backend.offerEntries).toHaveBeenCalledWith("r1", 0, 200);
  });

  it("Accept with Trust this device pins the sender and closes; the folder is the offered one", async () => {
    app.requests = [request()];
    render(IncomingDialog, { request: app.requests[0] });
    await fireEvent.click(document.getElementById("request-trust")!);
    await fireEvent.click(screen.getByRole("button", { name: "Accept" }));
    await waitFor(() => expect(backend.decideOffer).toHaveBeenCalledWith("r1", true, "/home/u/Downloads", true));
    await waitFor(() => expect(app.requests.length).toBe(0));
  });

  it("Decline and Esc decline without trusting", async () => {
    app.requests = [request()];
    render(IncomingDialog, { request: app.requests[0] });
    await fireEvent.click(document.getElementById("request-trust")!);
    await fireEvent.click(screen.getByRole("button", { name: "Decline" }));
    await waitFor(() => expect(backend.decideOffer).toHaveBeenCalledWith("r1", false, null, false));
    cleanup();
    vi.clearAllMocks();
    app.requests = [request({ offer: { ...request().offer, id: "r2" } })];
    render(IncomingDialog, { request: app.requests[0] });
    await fireEvent.keyDown(screen.getByRole("dialog"), { key: "Escape" });
    await waitFor(() => expect(backend.decideOffer).toHaveBeenCalledWith("r2", false, null, false));
  });

  it("'The words don't match' declines and says nothing was sent", async () => {
    app.requests = [request()];
    render(IncomingDialog, { request: app.requests[0] });
    await fireEvent.click(screen.getByRole("button", { name: "The words don't match" }));
    await waitFor(() => expect(screen.getByText(/Nothing was sent and this device is not trusted/)).toBeTruthy());
    expect(backend.decideOffer).toHaveBeenCalledWith("r1", false, null, false);
  });

  it("a trusted device is marked, with no trust checkbox, and still asks", () => {
    render(IncomingDialog, { request: request({ trusted: true }) });
    expect(document.getElementById("request-trusted")!.textContent).toBe("Trusted device");
    expect(document.getElementById("request-trust")).toBeNull();
    expect(screen.getByRole("button", { name: "Accept" })).toBeTruthy();
    expect(document.getElementById("request-phrase")!.dataset.phrase).toBe("olive-river-kayak-mango");
  });

  it("a hostile sender and file name are plain text", async () => {
    mock.entries = [{ path: HOSTILE + ".txt", size: 1, dir: false }];
    render(IncomingDialog, { request: request({ peer: HOSTILE }, 1) });
    expect(document.getElementById("request-sender")!.textContent).toBe(HOSTILE);
    await waitFor(() => expect(document.querySelector("#request-entries .entry-name")!.textContent).toContain("<img"));
    expect(document.querySelector("img")).toBeNull();
  });

  it("Accept is off when the folder lacks space", () => {
    const r = request();
    r.offer.total = 20_000_000;
    render(IncomingDialog, { request: r });
    expect((screen.getByRole("button", { name: "Accept" }) as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByText(/only .* free on this disk/)).toBeTruthy();
  });

  it("pages a big folder: only the visible page is fetched", async () => {
    mock.entries = Array.from({ length: 100_000 }, (_, i) => ({ path: `dir/f${i}`, size: 1, dir: false }));
    render(IncomingDialog, { request: request({}, 100_000) });
    await waitFor(() => expect(backend.offerEntries).toHaveBeenCalled());
    expect(backend.offerEntries).toHaveBeenCalledTimes(1);
    expect(document.querySelectorAll("#request-entries .entry").length).toBeLessThan(50);
  });

  it("an incoming event queues the request in the app", () => {
    app.onEvent({ type: "incoming", request: request() });
    app.onEvent({ type: "incoming", request: request() });
    expect(app.requests.map((r) => r.offer.id)).toEqual(["r1"]);
    expect(app.names["r1"]).toBe("laptop");
  });
});

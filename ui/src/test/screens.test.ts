// Component tests against backend.mock.ts (no Tauri): validation, hostile names, Resume,
// virtualization.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { fireEvent, render, screen, waitFor, cleanup } from "@testing-library/svelte";
import { flushSync } from "svelte";

vi.mock("../lib/backend", () => import("../lib/backend.mock"));

import * as backend from "../lib/backend.mock";
import { mock } from "../lib/backend.mock";
import { app } from "../lib/app.svelte";
import Receive from "../screens/Receive.svelte";
import Transfers from "../screens/Transfers.svelte";
import Peers from "../screens/Peers.svelte";
import Send from "../screens/Send.svelte";
import SettingsScreen from "../screens/Settings.svelte";
import VirtualList from "../lib/VirtualList.svelte";
import VirtualListHost from "./VirtualListHost.svelte";
import type { Transfer } from "../lib/types";

const HOSTILE = "<img src=x onerror=alert(1)>.txt";

function transfer(over: Partial<Transfer>): Transfer {
  return {
    id: "t1",
    direction: "receive",
    state: "interrupted",
    peerName: "laptop",
    path: "direct",
    files: 3,
    total: 1000,
    held: 620,
    dest: "/tmp/in",
    error: null,
    created: 1,
    running: false,
    ...over,
  };
}

beforeEach(() => {
  vi.clearAllMocks();
  mock.transfers = [];
  mock.offer = null;
  mock.entries = [];
  app.transfers = [];
  app.share = null;
  app.shareError = null;
  app.network = { mode: "embedded", url: "ws://127.0.0.1:1/ws", error: null };
});
afterEach(() => cleanup());

describe("Receive", () => {
  it("says what is wrong with a malformed code and keeps Get off", async () => {
    render(Receive);
    const input = screen.getByPlaceholderText("42-river-olive-kayak") as HTMLInputElement;
    const get = screen.getByRole("button", { name: "Get files" }) as HTMLButtonElement;
    expect(get.disabled).toBe(true);
    await fireEvent.input(input, { target: { value: "river-olive" } });
    await waitFor(() => expect(document.getElementById("code-message")!.textContent).toContain("starts with a number"));
    expect(get.disabled).toBe(true);
    await fireEvent.input(input, { target: { value: "42-river-olive-kayak" } });
    await waitFor(() => expect(get.disabled).toBe(false));
    expect(document.getElementById("code-message")!.textContent).toContain("Looks right");
  });

  it("shows a hostile sender and file name as plain text", async () => {
    mock.offer = {
      id: "o1",
      sender: HOSTILE,
      files: 1,
      dirs: 0,
      total: 5,
      entryCount: 1,
      downloadDir: "/tmp/in",
      freeBytes: 1_000_000,
    };
    mock.entries = [{ path: HOSTILE, size: 5, dir: false }];
    render(Receive);
    const input = screen.getByPlaceholderText("42-river-olive-kayak");
    await fireEvent.input(input, { target: { value: "42-river-olive-kayak" } });
    await waitFor(() => expect((screen.getByRole("button", { name: "Get files" }) as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByRole("button", { name: "Get files" }));
    await waitFor(() => expect(document.getElementById("offer-sender")!.textContent).toBe(HOSTILE));
    await waitFor(() => expect(document.querySelector(".entry-name")?.textContent).toBe(HOSTILE));
    expect(document.querySelector("#offer img")).toBeNull();
    await fireEvent.click(screen.getByRole("button", { name: "Accept" }));
    expect(backend.decideOffer).toHaveBeenCalledWith("o1", true, "/tmp/in");
  });

  it("Accept is off when the folder lacks space, with the numbers", async () => {
    mock.offer = { id: "o2", sender: "nas", files: 1, dirs: 0, total: 5_000_000, entryCount: 0, downloadDir: "/tmp", freeBytes: 1_000 };
    render(Receive);
    await fireEvent.input(screen.getByPlaceholderText("42-river-olive-kayak"), { target: { value: "42-river-olive-kayak" } });
    await waitFor(() => expect((screen.getByRole("button", { name: "Get files" }) as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByRole("button", { name: "Get files" }));
    await waitFor(() => expect(screen.getByText(/Needs 5.0 MB; only 1.0 KB free/)).toBeTruthy());
    expect((screen.getByRole("button", { name: "Accept" }) as HTMLButtonElement).disabled).toBe(true);
  });

  it("an unknown code gives words and a next step, not a raw error", async () => {
    render(Receive);
    await fireEvent.input(screen.getByPlaceholderText("42-river-olive-kayak"), { target: { value: "42-river-olive-kayak" } });
    await waitFor(() => expect((screen.getByRole("button", { name: "Get files" }) as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByRole("button", { name: "Get files" }));
    await waitFor(() => expect(screen.getByText("No transfer is waiting for this code.")).toBeTruthy());
  });
});

describe("Transfers", () => {
  it("an interrupted transfer from an earlier run shows Resume with what is kept", async () => {
    app.transfers = [transfer({})];
    render(Transfers);
    const resume = await screen.findByRole("button", { name: "Resume (62 % done)" });
    expect(screen.getByTitle(/Interrupted at 62 %/)).toBeTruthy();
    await fireEvent.click(resume);
    expect(backend.resumeTransfer).toHaveBeenCalledWith("t1");
  });

  it("a running transfer shows speed and Pause reports that it is not available", async () => {
    app.transfers = [transfer({ state: "transferring", running: true })];
    app.live["t1"] = { bytes: 500, total: 1000, rate: 2_000_000, eta: 30, filesDone: 1, path: "direct", error: null };
    render(Transfers);
    expect(await screen.findByText("2.0 MB/s")).toBeTruthy();
    expect(screen.getByText("less than a minute left")).toBeTruthy();
    await fireEvent.click(screen.getByRole("button", { name: "Pause transfer" }));
    await waitFor(() => expect(screen.getByText("Not available yet.")).toBeTruthy());
  });

  it("the empty state says what will appear and offers both actions", () => {
    render(Transfers);
    expect(screen.getByText("No transfers yet")).toBeTruthy();
    expect(screen.getByRole("button", { name: "Send files" })).toBeTruthy();
  });
});

describe("Peers", () => {
  it("peer names render as text", async () => {
    app.peers = { status: "online", detail: null, space: "home", me: "me", peers: [{ peerId: "p", deviceId: "d", name: HOSTILE, trusted: false, lan: false }] };
    render(Peers);
    expect(document.querySelector(".peer-name")!.textContent).toBe(HOSTILE);
    expect(document.querySelector("#peer-list img")).toBeNull();
    await fireEvent.click(screen.getByRole("button", { name: "Trust" }));
    expect(backend.setPeerTrust).toHaveBeenCalledWith("d", true);
  });
});

describe("Send", () => {
  it("Choose files goes through the same send as a drop, then shows the code", async () => {
    backend.pickPaths.mockResolvedValueOnce(["/tmp/a.txt"]);
    render(Send);
    await fireEvent.click(screen.getByRole("button", { name: "Choose files…" }));
    await waitFor(() => expect(document.getElementById("share-code")?.textContent).toBe("7-river-olive-kayak"));
    expect(backend.sendPaths).toHaveBeenCalledWith(["/tmp/a.txt"]);
    expect(document.getElementById("qr")).not.toBeNull();
  });
});

describe("Settings", () => {
  it("a pasted https:// address is explained inline, a good one is tested and saved", async () => {
    app.info = await backend.appInfo();
    render(SettingsScreen);
    await fireEvent.click(await screen.findByLabelText("A server at this address"));
    const url = document.getElementById("signal-url") as HTMLInputElement;
    await fireEvent.input(url, { target: { value: "https://signal.example.org/ws" } });
    await fireEvent.click(screen.getByRole("button", { name: "Test connection" }));
    await waitFor(() => expect(document.getElementById("signal-url-problem")!.textContent).toContain("ws:// or wss://"));
    await fireEvent.input(url, { target: { value: "wss://signal.example.org/ws" } });
    await fireEvent.click(screen.getByRole("button", { name: "Test connection" }));
    await waitFor(() => expect(document.getElementById("probe")!.textContent).toContain("Reachable"));
    expect(backend.testConnection).toHaveBeenLastCalledWith("wss://signal.example.org/ws");
    await fireEvent.click(screen.getByRole("button", { name: "Save" }));
    await waitFor(() => expect(backend.saveSettings).toHaveBeenCalled());
    expect(backend.saveSettings.mock.calls[0][0].signalUrl).toBe("wss://signal.example.org/ws");
  });
});

describe("live events", () => {
  it("progress updates the transfer's numbers and a state change moves it", () => {
    app.transfers = [transfer({ state: "transferring", running: true })];
    app.onEvent({ type: "progress", id: "t1", bytes: 700, total: 1000, rate: 5, eta: 60, filesDone: 2 });
    expect(app.live["t1"].bytes).toBe(700);
    app.onEvent({ type: "state", id: "t1", state: "completed" });
    expect(app.transfers[0].state).toBe("completed");
  });
});

describe("VirtualList", () => {
  it("renders only the visible rows of 100,000", () => {
    render(VirtualListHost, { count: 100_000 });
    flushSync();
    const rows = document.querySelectorAll("[role=listitem]");
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.length).toBeLessThan(100);
    void VirtualList;
  });
});

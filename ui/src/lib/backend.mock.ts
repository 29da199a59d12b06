// Same exports as backend.ts, in memory, for component tests (no Tauri). Tests set the
// canned answers on `mock` and read the calls from the vi.fn spies.
import { vi } from "vitest";
import type { AppInfo, CodeCheck, Entry, Offer, Peers, Probe, Request, Settings, Share, Transfer, UiEvent } from "./types";

export const mock = {
  transfers: [] as Transfer[],
  offer: null as Offer | null,
  entries: [] as Entry[],
  codeCheck: (text: string): CodeCheck =>
    /^\d+-[a-z]+-[a-z]+-[a-z]+$/.test(text.trim())
      ? { valid: true, code: text.trim(), message: null }
      : { valid: false, code: null, message: "a code starts with a number, like 42-river-olive-kitten" },
  peers: { status: "online", detail: null, space: null, me: "test-device", meId: "ab12", peers: [] } as Peers,
  requests: [] as Request[],
  events: null as ((e: UiEvent) => void) | null,
};

const settings: Settings = {
  signalUrl: null,
  iceServers: [],
  downloadDir: null,
  deviceName: null,
  runEmbeddedServer: true,
  theme: "system",
  space: null,
};

export const appInfo = vi.fn(
  async (): Promise<AppInfo> => ({
    version: "0.1.0",
    dataDir: "/tmp/skiff",
    settings,
    downloadDir: "/home/u/Downloads",
    deviceName: "test-device",
    network: { mode: "embedded", url: "ws://127.0.0.1:1/ws", error: null },
    notices: [],
  }),
);
export const subscribeEvents = vi.fn(async (h: (e: UiEvent) => void) => {
  mock.events = h;
});
export const pickPaths = vi.fn(async (_folder: boolean): Promise<string[]> => []);
export const pickFolder = vi.fn(async (_t: string): Promise<string | null> => null);
export const sendPaths = vi.fn(
  async (paths: string[]): Promise<Share> => ({
    id: "s1",
    code: "7-river-olive-kayak",
    link: "skiff://7-river-olive-kayak",
    items: paths.map((p) => ({ name: p.split("/").pop() ?? p, path: p, isDir: false, files: 1, bytes: 10 })),
    totalFiles: paths.length,
    totalBytes: paths.length * 10,
    skipped: [],
    signalUrl: "ws://127.0.0.1:1/ws",
    to: null,
  }),
);
export const checkCode = vi.fn(async (text: string) => mock.codeCheck(text));
export const startReceive = vi.fn(async (_code: string, _address: string | null): Promise<Offer> => {
  if (!mock.offer) throw { code: "unknown_code", message: "no transfer is waiting for this code" };
  return mock.offer;
});
export const offerEntries = vi.fn(async (_id: string, offset: number, limit: number) => mock.entries.slice(offset, offset + limit));
export const decideOffer = vi.fn(async (_id: string, _accept: boolean, _dir: string | null, _trust = false) => {});
export const pendingRequests = vi.fn(async () => mock.requests);
export const listTransfers = vi.fn(async () => mock.transfers);
export const resumeTransfer = vi.fn(async (_id: string) => {});
export const cancelTransfer = vi.fn(async (_id: string) => {});
export const pauseTransfer = vi.fn(async (_id: string) => {
  throw { code: "not_available", message: "pausing is not available in this version of the engine" };
});
export const openFolder = vi.fn(async (_p: string) => {});
export const getSettings = vi.fn(async () => settings);
export const saveSettings = vi.fn(async (_s: Settings) => appInfo());
export const checkSignalAddress = vi.fn(async (url: string) =>
  /^wss?:\/\/[^/@\s]+/.test(url) ? null : "use a ws:// or wss:// address, like wss://signal.example.org/ws",
);
export const testConnection = vi.fn(
  async (url: string): Promise<Probe> => ({ ok: true, url, rows: [{ level: "ok", label: "Reachable", detail: "answered in 3 ms", technical: null }], latencyMs: 1 }),
);
export const getPeers = vi.fn(async () => mock.peers);
export const setPeerTrust = vi.fn(async (_d: string, _t: boolean) => {});
export const sendToPeer = vi.fn(async (_d: string, _p: string[]): Promise<Share> => {
  throw { code: "not_available", message: "not available" };
});
export const copyText = vi.fn(async (_t: string) => {});
const unlisten = () => {};
export const onPeersChanged = vi.fn(async (_h: unknown) => unlisten);
export const onDragHover = vi.fn(async (_h: unknown) => unlisten);
export const onShareStarted = vi.fn(async (_h: unknown) => unlisten);
export const onShareFailed = vi.fn(async (_h: unknown) => unlisten);

// The only module that imports @tauri-apps/*: every call into Rust goes through here.
// A rejected call carries { code, message } (CommandError).
import { Channel, invoke } from "@tauri-apps/api/core";
import { listen } from "@tauri-apps/api/event";
import { open } from "@tauri-apps/plugin-dialog";
import type {
  AppInfo,
  CodeCheck,
  CommandError,
  DragHover,
  Entry,
  Offer,
  Peers,
  Probe,
  Request,
  Settings,
  Share,
  Transfer,
  UiEvent,
  Unlisten,
} from "./types";

function asError(e: unknown): CommandError {
  if (e && typeof e === "object" && "code" in e && "message" in e) return e as CommandError;
  return { code: "internal", message: String(e) };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw asError(e);
  }
}

export const appInfo = () => call<AppInfo>("app_info");

export function subscribeEvents(handler: (e: UiEvent) => void): Promise<void> {
  const channel = new Channel<UiEvent>();
  channel.onmessage = handler;
  return call<void>("subscribe_events", { onEvent: channel });
}

/** Opens the file (or folder) picker; resolves to the chosen paths (empty if cancelled). */
export async function pickPaths(folder: boolean): Promise<string[]> {
  const picked = await open({ multiple: true, directory: folder, title: folder ? "Choose folders to send" : "Choose files to send" });
  if (picked === null) return [];
  return Array.isArray(picked) ? picked : [picked];
}

export async function pickFolder(title: string): Promise<string | null> {
  const picked = await open({ multiple: false, directory: true, title });
  return typeof picked === "string" ? picked : null;
}

export const sendPaths = (paths: string[]) => call<Share>("send_paths", { paths });
export const checkCode = (text: string) => call<CodeCheck>("check_code", { text });
export const startReceive = (code: string, address: string | null) => call<Offer>("start_receive", { code, address });
export const offerEntries = (id: string, offset: number, limit: number) =>
  call<Entry[]>("offer_entries", { id, offset, limit });
export const decideOffer = (id: string, accept: boolean, dir: string | null, trust = false) =>
  call<void>("decide_offer", { id, accept, dir, trust });
export const pendingRequests = () => call<Request[]>("pending_requests");
export const listTransfers = () => call<Transfer[]>("list_transfers");
export const resumeTransfer = (id: string) => call<void>("resume_transfer", { id });
export const cancelTransfer = (id: string) => call<void>("cancel_transfer", { id });
export const pauseTransfer = (id: string) => call<void>("pause_transfer", { id });
export const openFolder = (path: string) => call<void>("open_folder", { path });
export const getSettings = () => call<Settings>("get_settings");
export const saveSettings = (settings: Settings) => call<AppInfo>("save_settings", { settings });
export const checkSignalAddress = (url: string) => call<string | null>("check_signal_address", { url });
export const testConnection = (url: string) => call<Probe>("test_connection", { url });
export const getPeers = () => call<Peers>("get_peers");
export const setPeerTrust = (deviceId: string, trusted: boolean) => call<void>("set_peer_trust", { deviceId, trusted });
export const sendToPeer = (deviceId: string, paths: string[]) => call<Share>("send_to_peer", { deviceId, paths });

export function copyText(text: string): Promise<void> {
  return navigator.clipboard.writeText(text);
}

export async function onPeersChanged(handler: (p: Peers) => void): Promise<Unlisten> {
  return listen<Peers>("peers-changed", (e) => handler(e.payload));
}
export async function onDragHover(handler: (d: DragHover) => void): Promise<Unlisten> {
  return listen<DragHover>("drag-hover", (e) => handler(e.payload));
}
export async function onShareStarted(handler: (s: Share) => void): Promise<Unlisten> {
  return listen<Share>("share-started", (e) => handler(e.payload));
}
export async function onShareFailed(handler: (e: CommandError) => void): Promise<Unlisten> {
  return listen<CommandError>("share-failed", (e) => handler(e.payload));
}

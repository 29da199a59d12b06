// Types shared by the UI and backend.ts; they mirror src-tauri/src/dto.rs (camelCase).

export interface CommandError {
  code: string;
  message: string;
}

export interface Item {
  name: string;
  path: string;
  isDir: boolean;
  files: number;
  bytes: number;
}

export interface Share {
  id: string;
  code: string;
  link: string;
  items: Item[];
  totalFiles: number;
  totalBytes: number;
  skipped: [string, string][];
  signalUrl: string | null;
  to: string | null;
}

export interface CodeCheck {
  valid: boolean;
  code: string | null;
  message: string | null;
}

export interface Entry {
  path: string;
  size: number;
  dir: boolean;
}

export interface Offer {
  id: string;
  sender: string;
  files: number;
  dirs: number;
  total: number;
  entryCount: number;
  downloadDir: string;
  freeBytes: number | null;
}

export interface Transfer {
  id: string;
  direction: "send" | "receive";
  state: string;
  peerName: string;
  path: string | null;
  files: number;
  total: number;
  held: number | null;
  dest: string | null;
  error: string | null;
  created: number;
  running: boolean;
}

export type UiEvent =
  | { type: "connected"; id: string; path: string; resumed: boolean }
  | { type: "state"; id: string; state: string }
  | { type: "progress"; id: string; bytes: number; total: number; rate: number; eta: number | null; filesDone: number }
  | { type: "done"; id: string; path: string; files: number }
  | { type: "error"; id: string | null; code: string; message: string; resumable: boolean }
  | { type: "finished"; id: string; ok: boolean; code: string | null; message: string | null; resumable: boolean }
  | { type: "verify"; id: string; peer: string; phrase: string; trusted: boolean }
  | { type: "incoming"; request: Request }
  | { type: "refresh" };

/** Another device asks to send files to this one (its `listen`). */
export interface Request {
  offer: Offer;
  /** The sender's device name (untrusted text). */
  peer: string;
  /** The sender's device id (its public key). */
  device: string;
  /** Four words, the same on the sender's screen. */
  phrase: string;
  /** The sender's key is pinned (Trust). */
  trusted: boolean;
}

export interface Peer {
  peerId: string;
  deviceId: string;
  name: string;
  trusted: boolean;
  /** Another app found on the LAN, reached through its own built-in server. */
  lan: boolean;
}

export interface Peers {
  status: "offline" | "connecting" | "online";
  detail: string | null;
  space: string | null;
  me: string;
  /** This device's id (its device key). */
  meId: string;
  peers: Peer[];
}

export interface Network {
  mode: "embedded" | "custom" | "direct";
  url: string | null;
  error: string | null;
  /** Not an error, but worth showing (e.g. the built-in server is not on its usual port). */
  note?: string | null;
}

export type Theme = "system" | "light" | "dark";

export interface IceServer {
  url: string;
  username: string | null;
  credential: string | null;
}

export interface Settings {
  signalUrl: string | null;
  iceServers: IceServer[];
  downloadDir: string | null;
  deviceName: string | null;
  runEmbeddedServer: boolean;
  theme: Theme;
  space: string | null;
}

export interface AppInfo {
  version: string;
  dataDir: string;
  settings: Settings;
  downloadDir: string;
  deviceName: string;
  network: Network;
  notices: CommandError[];
}

export interface CheckRow {
  level: "ok" | "warn" | "fail";
  label: string;
  detail: string;
  technical: string | null;
}

export interface Probe {
  ok: boolean;
  url: string;
  rows: CheckRow[];
  latencyMs: number | null;
}

export interface DragHover {
  over: boolean;
  count: number;
}

export type Unlisten = () => void;

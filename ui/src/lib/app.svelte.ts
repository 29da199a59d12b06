// App-wide state (Svelte 5 runes): transfers with their live numbers, the current share,
// peers, network mode, settings and notices. Screens read it; only backend.ts talks to Rust.
import * as backend from "./backend";
import type { AppInfo, CommandError, Network, Peers, Request, Share, Transfer, UiEvent } from "./types";

export interface Live {
  bytes: number;
  total: number;
  rate: number;
  eta: number | null;
  filesDone: number;
  path: string | null;
  error: CommandError | null;
}

export type Screen = "send" | "receive" | "transfers" | "peers" | "settings";

class AppStore {
  screen = $state<Screen>("send");
  info = $state<AppInfo | null>(null);
  network = $state<Network>({ mode: "direct", url: null, error: null });
  peers = $state<Peers>({ status: "offline", detail: null, space: null, me: "", meId: "", peers: [] });
  /** Requests from other devices waiting for Accept / Decline (the dialog shows the first). */
  requests = $state<Request[]>([]);
  transfers = $state<Transfer[]>([]);
  live = $state<Record<string, Live>>({});
  /** Names for transfers started in this session (the list itself has no file names). */
  names = $state<Record<string, string>>({});
  share = $state<Share | null>(null);
  /** Verification phrases of peer-list sends, by transfer. */
  phrases = $state<Record<string, { peer: string; phrase: string; trusted: boolean }>>({});
  shareError = $state<CommandError | null>(null);
  dragging = $state(0);
  notices = $state<CommandError[]>([]);
  announcement = $state("");
  #refreshing = false;
  #again = false;

  async start(): Promise<void> {
    await backend.subscribeEvents((e) => this.onEvent(e));
    const info = await backend.appInfo();
    this.applyInfo(info);
    this.notices = info.notices;
    this.peers = await backend.getPeers();
    for (const r of await backend.pendingRequests()) this.addRequest(r);
    await backend.onPeersChanged((p) => (this.peers = p));
    await backend.onDragHover((d) => (this.dragging = d.over ? Math.max(1, d.count) : 0));
    await backend.onShareStarted((s) => this.setShare(s));
    await backend.onShareFailed((e) => {
      this.shareError = e;
      this.screen = "send";
    });
    await this.refresh();
  }

  applyInfo(info: AppInfo): void {
    this.info = info;
    this.network = info.network;
    applyTheme(info.settings.theme);
  }

  setShare(s: Share): void {
    this.share = s;
    this.shareError = null;
    this.screen = "send";
    const first = s.items[0]?.name ?? "files";
    this.names[s.id] = s.items.length > 1 ? `${first} and ${s.items.length - 1} more` : first;
    this.announce(`Code ready: ${s.code.replaceAll("-", " ")}`);
    void this.refresh();
  }

  async sendPaths(paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    try {
      this.setShare(await backend.sendPaths(paths));
    } catch (e) {
      this.shareError = e as CommandError;
    }
  }

  announce(text: string): void {
    this.announcement = text;
  }

  async refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#again = true;
      return;
    }
    this.#refreshing = true;
    try {
      do {
        this.#again = false;
        this.transfers = await backend.listTransfers();
      } while (this.#again);
    } catch (e) {
      this.notices = [...this.notices, e as CommandError];
    } finally {
      this.#refreshing = false;
    }
  }

  /** Read-only view for templates (never writes state while rendering). */
  liveRead(id: string): Live | undefined {
    return this.live[id];
  }

  liveOf(id: string): Live {
    return (this.live[id] ??= { bytes: 0, total: 0, rate: 0, eta: null, filesDone: 0, path: null, error: null });
  }

  onEvent(e: UiEvent): void {
    switch (e.type) {
      case "progress": {
        const l = this.liveOf(e.id);
        l.bytes = e.bytes;
        l.total = e.total;
        l.rate = e.rate;
        l.eta = e.eta;
        l.filesDone = e.filesDone;
        return;
      }
      case "connected":
        this.liveOf(e.id).path = e.path;
        this.liveOf(e.id).error = null;
        this.setState(e.id, "transferring");
        return;
      case "state":
        this.setState(e.id, e.state);
        if (["completed", "failed", "cancelled", "declined", "interrupted"].includes(e.state)) void this.refresh();
        return;
      case "done":
        this.liveOf(e.id).path = e.path;
        this.announce("Transfer complete");
        void this.refresh();
        return;
      case "error":
        if (e.id) this.liveOf(e.id).error = { code: e.code, message: e.message };
        else this.notices = [...this.notices, { code: e.code, message: e.message }];
        return;
      case "finished":
        if (!e.ok && e.code) this.liveOf(e.id).error = { code: e.code, message: e.message ?? "" };
        void this.refresh();
        return;
      case "verify":
        this.phrases[e.id] = { peer: e.peer, phrase: e.phrase, trusted: e.trusted };
        return;
      case "incoming":
        this.addRequest(e.request);
        return;
      case "refresh":
        void this.refresh();
        return;
    }
  }

  addRequest(r: Request): void {
    if (this.requests.some((q) => q.offer.id === r.offer.id)) return;
    this.requests = [...this.requests, r];
    this.names[r.offer.id] = r.peer;
    this.announce(`${r.peer} wants to send you files`);
  }

  /** The dialog answered (or the request is gone). */
  dropRequest(id: string): void {
    this.requests = this.requests.filter((q) => q.offer.id !== id);
  }

  setState(id: string, state: string): void {
    const t = this.transfers.find((x) => x.id === id);
    if (t) t.state = state;
    else void this.refresh();
  }

  get activeCount(): number {
    return this.transfers.filter((t) => t.running && ["transferring", "interrupted", "waiting"].includes(t.state)).length;
  }

  get attentionCount(): number {
    return this.transfers.filter((t) => needsAttention(t)).length;
  }
}

export function needsAttention(t: Transfer): boolean {
  return !t.running && (t.state === "interrupted" || t.state === "transferring" || t.state === "failed");
}

export function canResume(t: Transfer): boolean {
  return !t.running && (t.state === "interrupted" || t.state === "transferring" || t.state === "paused");
}

export function applyTheme(theme: string): void {
  const root = document.documentElement;
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
}

export const app = new AppStore();

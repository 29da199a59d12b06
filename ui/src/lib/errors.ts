// One table from CommandError.code / engine error kinds to words with a next step.
import type { CommandError } from "./types";

export interface Words {
  title: string;
  next: string;
}

const TABLE: Record<string, Words> = {
  bad_code: { title: "That is not a valid code.", next: "A code is a number and three words, like 42-river-olive-kayak." },
  code_mismatch: {
    title: "That code didn't work and is now switched off.",
    next: "Ask the sender for a new code. If you typed it exactly, tell the sender: someone may have interfered.",
  },
  unknown_code: {
    title: "No transfer is waiting for this code.",
    next: "It may have expired (codes last 10 minutes) or been used already. Ask the sender for a new one.",
  },
  signal: {
    title: "Can't reach the signaling server.",
    next: "Check the address in Settings and that the server is running, then try again.",
  },
  peer_verification_failed: {
    title: "Peer verification failed: the other device could not be verified.",
    next: "Nothing was sent. Someone may be interfering: check that you are sending to the right device, then try again (with a new code).",
  },
  verification_failed: {
    title: "A received file did not match what the sender hashed.",
    next: "It was not saved under its name. Ask the sender to send it again.",
  },
  turn_refused: {
    title: "The relay (TURN) server refused the connection.",
    next: "Check the TURN server's address, user name and password in Settings.",
  },
  not_on_lan: {
    title: "No sender with this code on your network.",
    next: "Check that both computers are on the same network, or set a signaling server in Settings.",
  },
  lan: { title: "Finding devices on your network failed.", next: "Check the network connection, then try again." },
  protocol: {
    title: "The other side sent something Skiff does not understand.",
    next: "Make sure both sides run a current Skiff. Everything received so far is kept.",
  },
  replay: { title: "A message from the other side was repeated or out of order.", next: "The connection was closed to be safe. Resume continues from what was kept." },
  frame_too_large: { title: "The other side sent a message that is too large.", next: "The connection was closed. Make sure both sides run a current Skiff." },
  remote: { title: "The other side reported a problem.", next: "See Details for its words." },
  store: { title: "Skiff's transfer records could not be read or written.", next: "Check the disk space of the data folder, then restart Skiff." },
  node_stopped: { title: "Skiff is shutting down.", next: "Start it again to continue." },
  embedded_port: {
    title: "The built-in server is on another port this time.",
    next: "Another program (or another Skiff) uses port 47231. Other Skiff apps on your network still find this one; close the other program and restart Skiff to resume transfers that met on the usual port.",
  },
  timeout: { title: "The other side did not answer in time.", next: "Check that the other computer is online, then try again." },
  connection_closed: {
    title: "The connection was lost.",
    next: "What arrived so far is kept; Resume continues from there.",
  },
  interrupted: { title: "The transfer was interrupted.", next: "Everything received so far is kept. Resume continues from there." },
  disk_full: {
    title: "The disk is full.",
    next: "Free up space or choose another folder, then resume. Everything received so far is kept.",
  },
  not_writable: { title: "Skiff can't write to that folder.", next: "Choose another folder." },
  source_changed: {
    title: "A file changed on the sender's computer after sending began.",
    next: "Send it again to get the new version.",
  },
  sender_data_corrupt: {
    title: "A file kept failing its check.",
    next: "Nothing unverified was saved. Ask the sender to send it again.",
  },
  declined: { title: "The receiver declined.", next: "Send again if that was a mistake." },
  cancelled: { title: "The transfer was cancelled.", next: "Files that were complete are kept." },
  decrypt: {
    title: "Peer verification failed.",
    next: "Skiff could not prove the connection is private, so it stopped. Someone may be interfering with the network.",
  },
  bad_path: { title: "The sender offered an unsafe file name.", next: "Nothing was written. Ask the sender what they meant to send." },
  bad_offer: { title: "The offer was refused.", next: "Nothing was written." },
  offer_too_large: { title: "The offer is too large.", next: "Ask the sender to send it in parts." },
  busy: { title: "Another Skiff is working on this transfer.", next: "Close the other Skiff window or command first." },
  already_finished: { title: "That transfer is already complete.", next: "Nothing to resume." },
  unknown_transfer: { title: "That transfer is no longer running.", next: "Refresh the list." },
  not_available: { title: "Not available yet.", next: "This needs a newer Skiff engine." },
  invalid_input: { title: "Please check what you entered.", next: "" },
  bad_settings: { title: "Your settings file was damaged.", next: "Skiff started with default settings; check them and save." },
  no_such_offer: { title: "This offer is no longer waiting.", next: "Ask the sender for a new code." },
  io: { title: "A file could not be read or written.", next: "Check the folder and try again." },
};

export function words(e: CommandError | { code: string; message: string }): Words {
  const known = TABLE[e.code];
  if (known) return e.code === "invalid_input" ? { title: known.title, next: capitalise(e.message) } : known;
  return { title: "Something went wrong.", next: "See Details, and try again." };
}

function capitalise(s: string): string {
  return s.length ? s[0].toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".") : s;
}

/** Word for a transfer state (the engine's FSM names). */
export function stateWord(state: string, running: boolean, direction: string): string {
  switch (state) {
    case "waiting":
      return running ? "Waiting for the receiver" : "Code expired";
    case "offered":
      return "Waiting for your answer";
    case "connecting":
      return "Connecting";
    case "transferring":
      return running ? (direction === "send" ? "Sending" : "Receiving") : "Interrupted";
    case "interrupted":
      return running ? "Reconnecting" : "Interrupted";
    case "paused":
      return "Paused";
    case "completed":
      return "Completed";
    case "failed":
      return "Failed";
    case "cancelled":
      return "Cancelled";
    case "declined":
      return "Declined";
    default:
      return state.charAt(0).toUpperCase() + state.slice(1);
  }
}

export function pathWord(path: string | null): string {
  switch (path) {
    case "lan":
      return "LAN";
    case "direct":
      return "Direct";
    case "turn-udp":
    case "turn-tcp":
    case "turn-tls":
      return "Relay";
    default:
      return "—";
  }
}

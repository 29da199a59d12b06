import { describe, expect, it } from "vitest";
import { bytes, eta, middle, percentText, visible } from "../lib/format";
import { words } from "../lib/errors";

describe("format", () => {
  it("sizes read like people write them", () => {
    expect(bytes(0)).toBe("0 B");
    expect(bytes(999)).toBe("999 B");
    expect(bytes(1500)).toBe("1.5 KB");
    expect(bytes(48_200_000_000)).toBe("48.2 GB");
  });

  it("ETAs are coarse words", () => {
    expect(eta(null)).toBe("—");
    expect(eta(3)).toBe("a few seconds left");
    expect(eta(30)).toBe("less than a minute left");
    expect(eta(12 * 60)).toBe("about 12 minutes left");
  });

  it("small percentages keep one decimal so they visibly move", () => {
    expect(percentText(5, 1000)).toBe("0.5 %");
    expect(percentText(620, 1000)).toBe("62 %");
  });

  it("long names are shortened in the middle and keep the extension", () => {
    const n = "a".repeat(80) + ".pdf";
    const m = middle(n, 30);
    expect(m.length).toBeLessThanOrEqual(30);
    expect(m.endsWith(".pdf")).toBe(true);
    expect(m).toContain("…");
  });

  it("bidi and zero-width characters are shown escaped", () => {
    expect(visible("evil\u202Etxt.exe")).toBe("evil\\u{202e}txt.exe");
    expect(visible("a\u200Bb")).toBe("a\\u{200b}b");
    expect(visible("plain ü.txt")).toBe("plain ü.txt");
  });

  it("every error code the engine reports has words; unknown ones a generic line", () => {
    for (const code of ["code_mismatch", "unknown_code", "disk_full", "source_changed", "signal", "not_available", "embedded_port", "peer_verification_failed", "decrypt", "turn_refused", "not_on_lan", "protocol", "remote", "store"]) {
      expect(words({ code, message: "x" }).title).not.toBe("Something went wrong.");
    }
    expect(words({ code: "whatever", message: "x" }).title).toBe("Something went wrong.");
  });
});

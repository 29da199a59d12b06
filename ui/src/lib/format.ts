// Numbers for people: sizes, speeds, coarse ETAs, percentages.

const UNITS = ["B", "KB", "MB", "GB", "TB"];

export function bytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "—";
  let i = 0;
  let v = n;
  while (v >= 1000 && i < UNITS.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = i === 0 || v >= 100 ? 0 : 1;
  return `${v.toFixed(digits)} ${UNITS[i]}`;
}

export function rate(bytesPerSecond: number): string {
  return bytesPerSecond > 0 ? `${bytes(bytesPerSecond)}/s` : "Measuring…";
}

export function eta(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return "—";
  if (seconds < 5) return "a few seconds left";
  if (seconds < 60) return "less than a minute left";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return minutes === 1 ? "about 1 minute left" : `about ${minutes} minutes left`;
  const hours = Math.round(minutes / 6) / 10;
  return `about ${hours} hours left`;
}

export function percent(done: number, total: number): number {
  if (total <= 0) return done > 0 ? 100 : 0;
  return Math.min(100, (done / total) * 100);
}

export function percentText(done: number, total: number): string {
  const p = percent(done, total);
  return p >= 10 || p === 0 ? `${Math.floor(p)} %` : `${p.toFixed(1)} %`;
}

export function count(n: number, one: string, many: string): string {
  return `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;
}

/** Shortens the middle of a long name and keeps its extension visible. */
export function middle(name: string, max = 48): string {
  if (name.length <= max) return name;
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 && name.length - dot <= 8 ? name.slice(dot) : "";
  const keep = max - ext.length - 1;
  const head = Math.ceil(keep * 0.6);
  const tail = keep - head;
  return `${name.slice(0, head)}…${name.slice(name.length - ext.length - tail)}`;
}

/** Escapes characters that could disguise a name (bidi, zero-width, controls) as \u{…}. */
export function visible(name: string): string {
  return name.replace(
    /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]/g,
    (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`,
  );
}

/** Output of the client commands: aligned tables and key/value blocks for people, JSON for scripts, live redraws on a terminal. */

export type Cell = string | number | boolean | null | undefined;

const text = (c: Cell): string => (c === null || c === undefined || c === "" ? "-" : String(c));

/** Columns padded to their widest cell, two spaces apart; numbers right-aligned. */
export function table(headers: string[], rows: Cell[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(text))];
  const numeric = headers.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === "number"));
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (numeric[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** `label: value` lines, labels aligned. */
export function fields(pairs: [string, Cell][]): string {
  const width = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width)} ${text(v)}`).join("\n");
}

/**
 * A device's OTA progress as a person reads it: `DOWNLOADING 40% 2.0`,
 * `FAILED MD5_MISMATCH 2.0` (a failure's progress is the device's error code,
 * PROTOCOL.md, not a percentage).
 */
export function progressText(p: { state: string; progress: number; version: string; failureReason?: string | null }): string {
  return `${p.state} ${p.progress >= 0 ? `${p.progress}%` : (p.failureReason ?? `code ${p.progress}`)} ${p.version}`;
}

/** `[#######.......]  50%`: done out of total. */
export function bar(done: number, total: number, width = 30): string {
  const ratio = total > 0 ? Math.min(1, done / total) : 0;
  const filled = Math.round(ratio * width);
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${String(Math.floor(ratio * 100)).padStart(3)}%`;
}

/**
 * `[##x---....]`: the total split into segments, each drawn with its own
 * character, in order; what the segments leave is dots. A segment that is
 * not zero shows at least one character, however small its share.
 */
export function stackedBar(segments: [char: string, n: number][], total: number, width = 30): string {
  // Cumulative rounding: each segment ends where its running total falls, so the parts add up to the whole.
  let sum = 0;
  let edge = 0;
  const cells = segments.map(([, n]) => {
    sum += Math.max(0, n);
    const next = total > 0 ? Math.round(Math.min(1, sum / total) * width) : 0;
    const c = next - edge;
    edge = next;
    return c;
  });
  segments.forEach(([, n], i) => {
    if (n <= 0 || cells[i] !== 0) return;
    // Its one cell comes from the widest part: the dots, or another segment.
    const used = cells.reduce((a, b) => a + b, 0);
    const widest = cells.indexOf(Math.max(...cells));
    if (width - used < (cells[widest] as number)) cells[widest] = (cells[widest] as number) - 1;
    cells[i] = 1;
  });
  const drawn = segments.map(([char], i) => char.repeat(cells[i] as number)).join("");
  return `[${drawn}${".".repeat(Math.max(0, width - drawn.length))}]`;
}

const UNITS: [unit: string, seconds: number][] = [
  ["d", 86_400],
  ["h", 3600],
  ["min", 60],
  ["s", 1],
];

/** `25200` as `7 h`, `9000` as `2 h 30 min`, `45` as `45 s`: as the dashboard writes durations (no seconds beside days). */
export function duration(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  const parts: string[] = [];
  let left = Math.round(seconds);
  for (const [unit, size] of UNITS) {
    const n = Math.floor(left / size);
    left -= n * size;
    if (n > 0 && !(unit === "s" && seconds >= 86_400)) parts.push(`${n} ${unit}`);
  }
  return parts.join(" ");
}

/** `name n` pairs of the non-zero counts (all of them when every one is zero). */
export function counts(pairs: [string, number][]): string {
  const shown = pairs.filter(([, n]) => n > 0);
  return (shown.length > 0 ? shown : pairs).map(([k, n]) => `${k} ${n}`).join("  ");
}

/** `5242880` as `5.0 MiB`: sizes for people (tables keep the exact bytes). */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (let v = n; v >= 1024 && i < units.length - 1; v /= 1024) i++;
  return i === 0 ? `${n} B` : `${(n / 1024 ** i).toFixed(1)} ${units[i]}`;
}

export const json = (doc: unknown): void => void process.stdout.write(`${JSON.stringify(doc)}\n`);

export const print = (s: string): void => void process.stdout.write(`${s}\n`);

/**
 * What a watch draws on each change. On a terminal, a block of lines redrawn
 * in place (cursor up, clear down); elsewhere (a pipe, a CI log) one plain
 * line per change (or none, where `line` answers null: a transfer's every
 * chunk is no line for a log); with --json, one JSON document per line.
 */
export class LiveView<T> {
  #drawn = 0;
  readonly #tty: boolean;

  constructor(
    private readonly mode: { json: boolean },
    private readonly render: { block(v: T): string[]; line(v: T): string | null; json(v: T): unknown },
    private readonly out: NodeJS.WriteStream = process.stdout,
  ) {
    this.#tty = !mode.json && out.isTTY === true;
  }

  update(v: T): void {
    if (this.mode.json) return void this.out.write(`${JSON.stringify(this.render.json(v))}\n`);
    if (!this.#tty) {
      const line = this.render.line(v);
      return void (line !== null && this.out.write(`${line}\n`));
    }
    const width = this.out.columns || 80;
    const lines = this.render.block(v).map((l) => (l.length > width ? l.slice(0, width - 1) : l));
    // ESC[nA: up n lines; ESC[0J: clear to the end of the screen (ECMA-48).
    const up = this.#drawn > 0 ? `\r\x1b[${this.#drawn}A\x1b[0J` : "";
    this.out.write(`${up}${lines.join("\n")}\n`);
    this.#drawn = lines.length;
  }

  /** A line for people on stderr (a watch reconnecting), between the redraws: the next block is drawn below it. */
  note(line: string): void {
    process.stderr.write(`${line}\n`);
    this.#drawn = 0;
  }

  /** A closing line (a final state, a summary), kept below the block. */
  finish(line: string): void {
    if (!this.mode.json) this.out.write(`${line}\n`);
  }
}

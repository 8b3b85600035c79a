import { Command, Option } from "commander";
import { z } from "zod";
import { ApiClient } from "./api.client.js";
import { ExitCode, fail, UsageError } from "./cli.errors.js";
import type { ReconnectPolicy } from "./reconnect.js";

export const DEFAULT_SERVER = "http://localhost:4000";

/** What every client command gets: the API of the server and the output mode. */
export interface CliContext {
  api: ApiClient;
  json: boolean;
}

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Parses commander's options with a zod schema; a refusal names the flag (`--max-in-progress: ...`). */
export function parseFlags<T extends z.ZodType>(schema: T, flags: unknown): z.infer<T> {
  const r = schema.safeParse(flags);
  if (r.success) return r.data;
  throw new UsageError(
    r.error.issues
      .map((i) => {
        const flag = i.path[0];
        return typeof flag === "string" && !i.message.startsWith("--") ? `--${kebab(flag)}: ${i.message}` : i.message;
      })
      .join("\n"),
  );
}

/** Flag value parsers shared by the commands. */
export const flag = {
  /** A flag the command cannot do without (zod's own message names the type, not the need). */
  required: z.string({ error: "is required" }).min(1, "must not be empty"),
  int: (min: number, max: number) =>
    z
      .string()
      .regex(/^-?\d+$/, "must be an integer")
      .transform(Number)
      .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`)),
  number: (min: number, max: number) =>
    z.string().regex(/^\d+(\.\d+)?$/, "must be a number").transform(Number).pipe(z.number().min(min).max(max)),
  /** Seconds: `90`, `90s`, `30m`, `12h`, `2d`. */
  seconds: z
    .string()
    .regex(/^\d+[smhd]?$/, "must be seconds or a number and a unit: 90, 90s, 30m, 12h, 2d")
    .transform((v) => (/\d$/.test(v) ? Number(v) : Number(v.slice(0, -1)) * { s: 1, m: 60, h: 3600, d: 86_400 }[v.slice(-1) as "s" | "m" | "h" | "d"])),
  /** `a,b,c`, blanks dropped. */
  list: z.string().transform((v) => v.split(",").map((s) => s.trim()).filter((s) => s !== "")),
};

const addressFlags = z.object({
  server: z
    .string()
    .url("must be the server's URL, http(s)://host:port")
    .refine((u) => /^https?:$/.test(new URL(u).protocol), "must be an http:// or https:// URL"),
  token: z.string().optional(),
  json: z.boolean().optional(),
});

/** `--server` and `--token` (with their environment variables), on every command that talks to a server. */
export function withAddress(c: Command): Command {
  return c
    .addOption(new Option("--server <url>", "the server's URL").env("IOTHUB_OTA_SERVER").default(DEFAULT_SERVER))
    .addOption(new Option("--token <token>", "an API token").env("IOTHUB_OTA_TOKEN"));
}

/** `--reconnect-timeout`, on the commands that watch: how long a lost connection is tried again. */
export function withReconnect(c: Command): Command {
  return c.option(
    "--reconnect-timeout <duration>",
    "a lost connection (a server restart, a deploy) is reopened with backoff for this long, then the watch exits 6: 90s, 5m, 1h; 0: at once",
    "5m",
  );
}

/** The watch's reconnect policy from `--reconnect-timeout`; its notes go to `note` (stderr). */
export function reconnectPolicy(o: Record<string, unknown>, note: (line: string) => void): ReconnectPolicy {
  const { reconnectTimeout } = parseFlags(z.object({ reconnectTimeout: flag.seconds }), o);
  return { timeoutMs: reconnectTimeout * 1000, note };
}

/** An `Example:` block after the command's help: every command has one (issue 8). */
export function withExample(c: Command, example: string): Command {
  return c.addHelpText("after", `\nExample:\n  ${example.trim().split("\n").join("\n  ")}\n`);
}

/** A group of client commands (`devices`, `rollout`...), with an example after its help too. */
export function commandGroup(parent: Command, name: string, description: string, example: string): Command {
  return withExample(parent.command(name).description(description), example);
}

/**
 * A client command: `--server`, `--token`, `--json`, an example after its
 * help, and an action that gets the API and exits with the code it returns.
 * Errors print as the API said them (`error FORBIDDEN: ...`) and exit 2.
 */
export function clientCommand(
  parent: Command,
  nameAndArgs: string,
  description: string,
  example: string,
  run: (ctx: CliContext, args: string[], opts: Record<string, unknown>) => Promise<ExitCode | void>,
): Command {
  const c = parent.command(nameAndArgs).description(description);
  withAddress(c).option("--json", "print JSON for scripts (one document; one per line for watches)");
  withExample(c, example);
  c.action(async (...params: unknown[]) => {
    const cmd = params.at(-1) as Command;
    const opts = cmd.opts<Record<string, unknown>>();
    let api: ApiClient | undefined;
    try {
      const address = parseFlags(addressFlags, opts);
      api = new ApiClient(address);
      const code = await run({ api, json: address.json ?? false }, cmd.processedArgs as string[], opts);
      process.exitCode = code ?? ExitCode.OK;
    } catch (err) {
      fail(err);
    } finally {
      await api?.close();
    }
  });
  return c;
}

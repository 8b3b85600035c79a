import type { Command } from "commander";
import { z } from "zod";
import type { CreateRolloutInput, FailureClass, RolloutPolicyInput, WaveInput } from "../client/generated/graphql.js";
import { flag } from "./cli.command.js";
import { UsageError } from "./cli.errors.js";
import { firmwareFlags, firmwareOf, firmwareOptions, missingFirmware } from "./firmware.flags.js";

export const FAILURE_CLASSES = ["DOWNLOAD_FAILED", "INSTALL_FAILED", "MD5_MISMATCH", "OTHER", "ROLLED_BACK", "TIMED_OUT"] as const satisfies readonly FailureClass[];
const failureClass = z.enum(FAILURE_CLASSES, { error: `must be one of ${FAILURE_CLASSES.join(", ")}` });

/** `10%` or `25` (devices), then `:soak=<duration>` and `:success=<ratio>` in any order. */
const wave = z.string().transform((spec, ctx): WaveInput => {
  const [size = "", ...rest] = spec.split(":");
  const w: WaveInput = /^\d+(\.\d+)?%$/.test(size) ? { percent: Number(size.slice(0, -1)) } : /^\d+$/.test(size) ? { count: Number(size) } : {};
  if (w.percent === undefined && w.count === undefined) ctx.addIssue({ code: "custom", message: `${spec}: starts with a percent (10%) or a device count (25)` });
  for (const part of rest) {
    const [key, value = ""] = part.split("=");
    const soak = key === "soak" ? flag.seconds.safeParse(value) : undefined;
    if (soak?.success) w.soakSeconds = soak.data;
    else if (key === "success" && /^(0(\.\d+)?|1(\.0+)?)$/.test(value)) w.successRatio = Number(value);
    else ctx.addIssue({ code: "custom", message: `${spec}: "${part}" is not soak=<duration> or success=<0..1>` });
  }
  return w;
});

/** `MD5_MISMATCH:10:20`: abort when more than 10 % of at least 20 finished executions failed with MD5_MISMATCH. */
const abortRule = z.string().transform((spec, ctx) => {
  const [cls, percent, min] = spec.split(":");
  const c = failureClass.safeParse(cls);
  if (!c.success || !/^\d+(\.\d+)?$/.test(percent ?? "") || !/^\d+$/.test(min ?? "")) {
    ctx.addIssue({ code: "custom", message: `${spec}: not CLASS:PERCENT:MIN_FINISHED (MD5_MISMATCH:10:20); classes ${FAILURE_CLASSES.join(", ")}` });
    return z.NEVER;
  }
  return { failureClass: c.data, thresholdPercent: Number(percent), minFinished: Number(min) };
});

/** `DOWNLOAD_FAILED:3:30s[:10m]`: up to 3 attempts in all, 30 s apart doubling each time (at most 10 min). */
const retryRule = z.string().transform((spec, ctx) => {
  const [cls, attempts, backoff, maxBackoff] = spec.split(":");
  const c = failureClass.safeParse(cls);
  const b = flag.seconds.safeParse(backoff ?? "");
  const m = maxBackoff === undefined ? undefined : flag.seconds.safeParse(maxBackoff);
  if (!c.success || !/^\d+$/.test(attempts ?? "") || !b.success || (m && !m.success)) {
    ctx.addIssue({ code: "custom", message: `${spec}: not CLASS:MAX_ATTEMPTS:BACKOFF[:MAX_BACKOFF] (DOWNLOAD_FAILED:3:30s:10m)` });
    return z.NEVER;
  }
  return { failureClass: c.data, maxAttempts: Number(attempts), backoffSeconds: b.data, ...(m?.success ? { maxBackoffSeconds: m.data } : {}) };
});

export const rolloutFlags = firmwareFlags.extend({
  input: z.string().optional(),
  product: z.string().min(1, "must not be empty").optional(),
  name: z.string().optional(),
  membership: z.enum(["snapshot", "continuous"], { error: "must be snapshot or continuous" }).optional(),
  tag: z.string().min(1, "must not be empty").optional(),
  devices: flag.list.optional(),
  wholeProduct: z.boolean().optional(),
  wave: z.array(wave).optional(),
  abortRule: z.array(abortRule).optional(),
  retry: z.array(retryRule).optional(),
  timeout: flag.seconds.optional(),
  maxInProgress: flag.int(1, 1_000_000).optional(),
  maxPerMinute: flag.int(1, 1_000_000).optional(),
  allowFrom: flag.list.optional(),
  allowDowngrade: z.boolean().optional(),
  window: z
    .string()
    .regex(/^\d\d:\d\d-\d\d:\d\d$/, "must be HH:MM-HH:MM, UTC")
    .transform((w) => ({ start: w.slice(0, 5), end: w.slice(6) }))
    .optional(),
  startAt: z.iso.datetime({ offset: true, error: "must be an ISO date-time: 2030-01-31T22:00:00Z" }).optional(),
});
export type RolloutFlags = z.infer<typeof rolloutFlags>;

const collect = (value: string, previous: string[] | undefined) => [...(previous ?? []), value];

/** The flags of `rollout create` and `rollout preview`. */
export function rolloutOptions(c: Command): Command {
  c.option("--input <file|->", "a whole CreateRolloutInput as JSON (a file, or - for stdin); flags override its fields")
    .option("--product <name>", "the product")
    .option("--name <name>", "a label for people")
    .option("--membership <m>", "snapshot (default: the devices matched now) | continuous (devices that come to match join)")
    .option("--tag <tag>", "target: the devices with this tag")
    .option("--devices <a,b>", "target: these devices")
    .option("--whole-product", "target: every device of the product");
  firmwareOptions(c, { sha256: true });
  return c
    .option("--wave <spec>", "a wave, repeat in order: 10% or 25 (devices), then :soak=<duration> :success=<0..1> (10%:soak=5m:success=0.95)", collect)
    .option("--abort-rule <spec>", "CLASS:PERCENT:MIN_FINISHED, repeatable (MD5_MISMATCH:10:20: abort past 10 % of at least 20 finished)", collect)
    .option("--retry <spec>", "CLASS:MAX_ATTEMPTS:BACKOFF[:MAX_BACKOFF], repeatable (DOWNLOAD_FAILED:3:30s:10m)", collect)
    .option("--timeout <duration>", "a device in progress with no report for this long is TIMED_OUT (default 1h)")
    .option("--max-in-progress <n>", "at most this many devices upgrading at once")
    .option("--max-per-minute <n>", "at most this many devices notified per minute")
    .option("--allow-from <versions>", "only devices on these versions or ranges, comma-separated (1.2.x,>=1.0.0 <2)")
    .option("--allow-downgrade", "notify devices on a newer version too")
    .option("--window <HH:MM-HH:MM>", "notify devices only in this daily window, UTC")
    .option("--start-at <date-time>", "notify nobody before this (ISO date-time)");
}

const inputShape = z.object({}).passthrough();

/** `--input` read and parsed: a JSON object, from a file or stdin. */
export async function readInput(source: string, read: (source: string) => Promise<string>): Promise<Partial<CreateRolloutInput>> {
  let text: string;
  try {
    text = await read(source);
  } catch (err) {
    throw new UsageError(`--input: cannot read ${source}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--input: ${source} is not JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const r = inputShape.safeParse(parsed);
  if (!r.success) throw new UsageError(`--input: ${source} must hold a JSON object (a CreateRolloutInput)`);
  return r.data as Partial<CreateRolloutInput>;
}

const HOSTED = "--version, --url, --size, --md5 and --sha256";

/**
 * The rollout's firmware: the flags' way replaces the file's (an artifact's id
 * for a hosted file, or back), and a hosted file's flags override the file's
 * fields one by one. Exactly one way in the end.
 */
function rolloutFirmwareOf(base: Partial<CreateRolloutInput>, f: RolloutFlags, missing: string[]): Pick<CreateRolloutInput, "firmware" | "firmwareId"> {
  const flags = firmwareOf(f, HOSTED);
  if (flags !== null && "firmwareId" in flags) return { firmwareId: flags.firmwareId };
  const firmwareId = flags === null ? base.firmwareId : undefined;
  const hosted = flags !== null || base.firmware != null ? { type: "firmware", ...base.firmware, ...flags?.firmware } : undefined;
  if (firmwareId != null && hosted !== undefined) throw new UsageError("--input: give firmwareId or firmware, not both");
  if (firmwareId != null) return { firmwareId };
  if (hosted === undefined) {
    missing.push(`the firmware: --firmware-id <id> (an uploaded artifact) or ${HOSTED} (or firmwareId or firmware in --input)`);
    return {};
  }
  const fields = missingFirmware(hosted, ["version", "url", "size", "md5", "sha256"], (k) => ` (or firmware.${k} in --input)`);
  if (fields.length > 0) missing.push(...fields.slice(0, -1), `${fields.at(-1)}; or give --firmware-id <id>, an uploaded artifact`);
  return { firmware: hosted as CreateRolloutInput["firmware"] };
}

const defined = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/**
 * The CreateRolloutInput of an --input document and the flags: each flag
 * overrides the matching field (firmware and policy field by field; any
 * target flag replaces the target; --firmware-id replaces the file's firmware).
 * Pure: the server checks the rest.
 */
export function rolloutInputOf(base: Partial<CreateRolloutInput>, f: RolloutFlags): CreateRolloutInput {
  const targets = [f.tag !== undefined, f.devices !== undefined, f.wholeProduct === true].filter(Boolean).length;
  if (targets > 1) throw new UsageError("give one of --tag, --devices and --whole-product");
  const target = f.tag !== undefined ? { tag: f.tag } : f.devices !== undefined ? { deviceNames: f.devices } : f.wholeProduct ? { wholeProduct: true } : base.target;
  const policy: RolloutPolicyInput = {
    ...base.policy,
    ...defined({
      waves: f.wave,
      abortRules: f.abortRule,
      retries: f.retry,
      inProgressTimeoutSeconds: f.timeout,
      maxInProgress: f.maxInProgress,
      maxPerMinute: f.maxPerMinute,
      allowedFromVersions: f.allowFrom,
      allowDowngrade: f.allowDowngrade,
      maintenanceWindow: f.window,
      startAt: f.startAt,
    }),
  };
  const missing: string[] = [];
  const productName = f.product ?? base.productName;
  if (productName === undefined) missing.push("--product (or productName in --input)");
  if (target === undefined) missing.push("a target: --tag, --devices or --whole-product (or target in --input)");
  const firmware = rolloutFirmwareOf(base, f, missing);
  if (missing.length > 0) throw new UsageError(`missing ${missing.join("; ")}`);
  const { firmware: _firmware, firmwareId: _firmwareId, ...rest } = base;
  return {
    ...rest,
    ...defined({ name: f.name, membership: f.membership?.toUpperCase() as "SNAPSHOT" | "CONTINUOUS" | undefined }),
    productName: productName as string,
    target: target as CreateRolloutInput["target"],
    ...firmware,
    ...(Object.keys(policy).length > 0 ? { policy } : {}),
  };
}

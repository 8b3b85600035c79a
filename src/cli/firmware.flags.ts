import type { Command } from "commander";
import { z } from "zod";
import { flag } from "./cli.command.js";
import { UsageError } from "./cli.errors.js";

/**
 * The firmware flags of `ota send` and `rollout create|preview`: an uploaded
 * artifact (`--firmware-id`), or a file hosted elsewhere (`--version --url
 * --size --md5 [--sha256] [--type]`). The server checks the values (BAD_USER_INPUT).
 */
export const firmwareFlags = z.object({
  firmwareId: z.string().min(1, "must not be empty").optional(),
  version: z.string().min(1, "must not be empty").optional(),
  url: z.string().url("must be the http(s) URL devices download").optional(),
  size: flag.int(1, Number.MAX_SAFE_INTEGER).optional(),
  md5: z.string().regex(/^[0-9a-fA-F]{32}$/, "must be 32 hex characters").optional(),
  sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, "must be 64 hex characters").optional(),
  type: z.string().min(1, "must not be empty").optional(),
});
export type FirmwareFlags = z.infer<typeof firmwareFlags>;

const HOSTED = ["version", "url", "size", "md5", "sha256", "type"] as const;
type Hosted = Partial<Pick<Required<FirmwareFlags>, (typeof HOSTED)[number]>>;

export function firmwareOptions(c: Command, { sha256 }: { sha256: boolean }): Command {
  c.option("--firmware-id <id>", "an uploaded artifact (firmware upload, firmware list): the server fills url, size and digests; instead of --version, --url, --size, --md5")
    .option("--version <v>", "firmware version")
    .option("--url <url>", "http(s) URL the devices download")
    .option("--size <bytes>", "size in bytes")
    .option("--md5 <hex>", "md5 of the file, 32 hex characters");
  if (sha256) c.option("--sha256 <hex>", "sha256 of the file, 64 hex characters");
  return c.option("--type <type>", 'firmware type (default "firmware")');
}

/**
 * Which firmware the flags name: an uploaded artifact, the defined fields of
 * a hosted file (so they can override an --input file's), or none. Both ways
 * at once are refused: an artifact's fields are the server's.
 */
export function firmwareOf(f: FirmwareFlags, hostedFlags: string): { firmwareId: string } | { firmware: Hosted } | null {
  const hosted: Hosted = Object.fromEntries(HOSTED.filter((k) => f[k] !== undefined).map((k) => [k, f[k]]));
  const given = Object.keys(hosted);
  if (f.firmwareId !== undefined && given.length > 0) {
    throw new UsageError(`give --firmware-id or ${hostedFlags}, not both (${given.map((k) => `--${k}`).join(", ")} given): an uploaded artifact's version, url, size and digests are the server's`);
  }
  if (f.firmwareId !== undefined) return { firmwareId: f.firmwareId };
  return given.length > 0 ? { firmware: hosted } : null;
}

/** The fields of a hosted firmware that are still missing, as `--flag` (with `extra` after each, for an --input file's name of it). */
export function missingFirmware(firmware: Hosted, required: readonly (typeof HOSTED)[number][], extra = (_k: string) => ""): string[] {
  return required.filter((k) => firmware[k] === undefined).map((k) => `--${k}${extra(k)}`);
}

import type { Command } from "commander";
import { z } from "zod";
import { CliProgressWatchDocument, RolloutDocument, type CliProgressWatchSubscription } from "../client/generated/graphql.js";
import { clientCommand, commandGroup, parseFlags, reconnectPolicy, withReconnect } from "./cli.command.js";
import { ApiError } from "./cli.errors.js";
import { bar, counts, LiveView, progressText } from "./cli.output.js";

type Progress = CliProgressWatchSubscription["otaProgressChanged"];

const OTA_STATES = ["DOWNLOADING", "DOWNLOADED", "SUCCEEDED", "FAILED"] as const satisfies readonly Progress["state"][];

/** On a terminal: the counts per state, then the devices heard from most recently, each with its bar. */
const ROWS_SHOWN = 20;

const watchFlags = z
  .object({ product: z.string().min(1).optional(), tag: z.string().min(1).optional(), device: z.string().min(1).optional(), rollout: z.string().min(1).optional() })
  .refine((f) => [f.tag, f.device, f.rollout].filter((v) => v !== undefined).length <= 1, "give at most one of --tag, --device and --rollout")
  .refine((f) => f.product !== undefined || f.rollout !== undefined, "--product is required (or --rollout, whose product it is)");


/** The latest report of each device heard from, newest last. */
class Latest {
  readonly #byDevice = new Map<string, Progress>();

  add(p: Progress): this {
    this.#byDevice.delete(p.deviceName);
    this.#byDevice.set(p.deviceName, p);
    return this;
  }

  block(scope: string): string[] {
    const all = [...this.#byDevice.values()];
    const recent = all.slice(-ROWS_SHOWN).reverse();
    const width = Math.max(...recent.map((p) => p.deviceName.length));
    return [
      `${scope}: ${all.length} devices  ${counts(OTA_STATES.map((s) => [s, all.filter((p) => p.state === s).length]))}`,
      ...recent.map((p) => `${p.deviceName.padEnd(width)}  ${bar(p.state === "SUCCEEDED" ? 100 : Math.max(0, p.progress), 100, 20)}  ${progressText(p)}`),
      ...(all.length > recent.length ? [`... and ${all.length - recent.length} more`] : []),
    ];
  }
}

export function registerProgressCommands(program: Command): void {
  const progress = commandGroup(program, "progress", "OTA progress reports of devices, live", "iothub-ota progress watch --product demo --tag beta");
  const watch = clientCommand(
    progress,
    "watch",
    "print devices' OTA progress reports as they arrive (of a product, a tag, a device or a rollout) until Ctrl-C",
    "iothub-ota progress watch --product demo --tag beta\niothub-ota progress watch --rollout 42 --json | tee progress.jsonl",
    async ({ api, json: asJson }, _args, o) => {
      const f = parseFlags(watchFlags, o);
      // Reports sent while the connection is down are not shown: a watch shows what arrives.
      const reconnect = reconnectPolicy(o, (line) => view.note(line));
      let productName = f.product;
      if (f.rollout !== undefined && productName === undefined) {
        const { rollout } = await api.request(RolloutDocument, { id: f.rollout });
        if (!rollout) throw new ApiError([{ code: "NOT_FOUND", message: `no rollout ${f.rollout}` }]);
        productName = rollout.productName;
      }
      const scope = `${productName}${f.tag ? ` tag ${f.tag}` : ""}${f.device ? `/${f.device}` : ""}${f.rollout ? ` rollout ${f.rollout}` : ""}`;
      const latest = new Latest();
      const view = new LiveView<Progress>(
        { json: asJson },
        { block: (p) => latest.add(p).block(scope), line: (p) => `${p.receivedAt} ${p.deviceName} ${progressText(p)}`, json: (p) => p },
      );
      const sub = api.subscribe(
        CliProgressWatchDocument,
        { productName: productName as string, tag: f.tag ?? null, deviceName: f.device ?? null, rolloutId: f.rollout ?? null },
        ({ otaProgressChanged }) => view.update(otaProgressChanged),
        reconnect,
      );
      process.stderr.write(`watching ${scope} (Ctrl-C to stop)\n`);
      // Ctrl-C (or a supervisor's SIGTERM) is how a watch ends: a clean exit 0.
      const stopped = new Promise<void>((resolve) => {
        for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => resolve());
      });
      await Promise.race([sub.done, stopped]);
      sub.stop();
    },
  );
  withReconnect(watch)
    .option("--product <name>", "the product")
    .option("--tag <tag>", "only devices with this tag")
    .option("--device <name>", "only this device")
    .option("--rollout <id>", "only this rollout's devices and firmware (--product then defaults to the rollout's)")
    .addHelpText("after", "Exits 0 on Ctrl-C (or SIGTERM); 6 when the connection was lost and not back within --reconnect-timeout; 2 on an error.");
}

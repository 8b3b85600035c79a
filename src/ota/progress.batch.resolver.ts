import { Arg, Authorized, ID, Int, Resolver, Root, Subscription } from "type-graphql";
import type { SubscriptionContext } from "../http/context.js";
import { BATCH_INTERVAL_MIN_MS, batchInterval, ProgressBatches, type ProgressBatch } from "./progress.batch.js";
import { WATCH_DEVICES_MAX } from "./progress.feed.js";
import { OtaProgressBatch, toOtaProgressBatch } from "./progress.batch.types.js";

interface BatchArgs {
  productName: string;
  tag?: string | null;
  deviceNames?: string[] | null;
  rolloutId?: string | null;
  intervalMs: number;
}

/**
 * Progress for dashboards of large rollouts: the reports `otaProgressChanged`
 * would send, coalesced to the latest per device and sent at most once per
 * interval, so 100,000 devices reporting a step is one message per interval,
 * not 100,000.
 */
@Resolver(() => OtaProgressBatch)
export class ProgressBatchResolver {
  @Authorized("read")
  @Subscription(() => OtaProgressBatch, {
    description:
      "The latest progress report of each device of a product (or of the devices with a tag, or of the deviceNames; with rolloutId, of that rollout's devices about its version) " +
      `that reported within the last intervalMs (at least ${BATCH_INTERVAL_MIN_MS}), sent once per interval and only when there is something to send.`,
    subscribe: async ({ args, context }) => {
      const ctx = context as SubscriptionContext;
      const { productName, tag, deviceNames, rolloutId, intervalMs } = args as BatchArgs;
      batchInterval(intervalMs);
      const accept = rolloutId == null ? undefined : await ctx.rollouts.reportFilter(rolloutId, productName);
      return new ProgressBatches(ctx.progressFeed.watch({ productName, tag, deviceNames, accept }), intervalMs);
    },
  })
  otaProgressBatches(
    @Root() batch: ProgressBatch,
    @Arg("productName", () => String) _productName: string,
    @Arg("tag", () => String, { nullable: true }) _tag: string | null,
    @Arg("deviceNames", () => [String], {
      nullable: true,
      description: `Only these devices (1 to ${WATCH_DEVICES_MAX}: a dashboard's rows on screen), within the product, tag and rollout given.`,
    })
    _deviceNames: string[] | null,
    @Arg("rolloutId", () => ID, { nullable: true }) _rolloutId: string | null,
    @Arg("intervalMs", () => Int, { defaultValue: 1000, description: `Milliseconds between batches, at least ${BATCH_INTERVAL_MIN_MS}.` }) _intervalMs: number,
  ): OtaProgressBatch {
    return toOtaProgressBatch(batch);
  }
}

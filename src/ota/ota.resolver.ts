import { Arg, Authorized, Mutation, Query, Resolver, Root, Subscription } from "type-graphql";
import type { Context } from "../http/context.js";
import { OtaService } from "./ota.service.js";
import { OtaProgress, SendOtaInput, SendOtaResult, toOtaProgress } from "./ota.types.js";
import type { ProgressFeed } from "./progress.feed.js";
import type { ProgressRecord } from "./progress.model.js";

/** Subscriptions read the feed from the context: type-graphql calls `subscribe` without a resolver instance. */
export interface SubscriptionContext extends Context {
  progressFeed: ProgressFeed;
}

@Resolver(() => OtaProgress)
export class OtaResolver {
  constructor(private readonly ota: OtaService) {}

  @Authorized("write")
  @Mutation(() => SendOtaResult, { description: "Publishes `$ota_upgrade` (QoS 1) to one device or to every device with a tag." })
  sendOta(@Arg("input", () => SendOtaInput) input: SendOtaInput): Promise<SendOtaResult> {
    return this.ota.send({ ...input, firmware: { ...input.firmware } });
  }

  @Authorized("read")
  @Query(() => OtaProgress, { nullable: true, description: "The device's latest report, or null." })
  async otaProgress(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
  ): Promise<OtaProgress | null> {
    const record = await this.ota.progressOf(productName, deviceName);
    return record && toOtaProgress(record);
  }

  @Authorized("read")
  @Query(() => [OtaProgress], { nullable: "items", description: "Latest reports in the order asked (null where none), in one Redis round trip." })
  async otaProgresses(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceNames", () => [String]) deviceNames: string[],
  ): Promise<(OtaProgress | null)[]> {
    const records = await this.ota.progressOfMany(productName, deviceNames);
    return records.map((r) => r && toOtaProgress(r));
  }

  @Authorized("read")
  @Subscription(() => OtaProgress, {
    description: "Every progress report of a product, of one device, or of the devices with a tag, as it arrives.",
    subscribe: ({ args, context }) => (context as SubscriptionContext).progressFeed.watch(args),
  })
  otaProgressChanged(
    @Root() record: ProgressRecord,
    @Arg("productName", () => String) _productName: string,
    @Arg("deviceName", () => String, { nullable: true }) _deviceName: string | null,
    @Arg("tag", () => String, { nullable: true }) _tag: string | null,
  ): OtaProgress {
    return toOtaProgress(record);
  }
}

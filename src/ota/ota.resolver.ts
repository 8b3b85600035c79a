import { Arg, Authorized, ID, Mutation, Query, Resolver, Root, Subscription } from "type-graphql";
import type { SubscriptionContext } from "../http/context.js";
import { OtaService } from "./ota.service.js";
import { OtaProgress, SendOtaInput, SendOtaResult, toOtaProgress } from "./ota.types.js";
import type { ProgressRecord } from "./progress.model.js";

@Resolver(() => OtaProgress)
export class OtaResolver {
  constructor(private readonly ota: OtaService) {}

  @Authorized("write")
  @Mutation(() => SendOtaResult, { description: "Publishes `$ota_upgrade` (QoS 1) to one device or to every device with a tag." })
  sendOta(@Arg("input", () => SendOtaInput) input: SendOtaInput): Promise<SendOtaResult> {
    return this.ota.send({ ...input, firmware: input.firmware && { ...input.firmware } });
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
    description:
      "Every progress report of a product, of one device, or of the devices with a tag, as it arrives; " +
      "with rolloutId, only the reports of that rollout's devices about its firmware version.",
    subscribe: async ({ args, context }) => {
      const ctx = context as SubscriptionContext;
      const { productName, deviceName, tag, rolloutId } = args as { productName: string; deviceName?: string | null; tag?: string | null; rolloutId?: string | null };
      const accept = rolloutId == null ? undefined : await ctx.rollouts.reportFilter(rolloutId, productName);
      return ctx.progressFeed.watch({ productName, deviceName, tag, accept });
    },
  })
  otaProgressChanged(
    @Root() record: ProgressRecord,
    @Arg("productName", () => String) _productName: string,
    @Arg("deviceName", () => String, { nullable: true }) _deviceName: string | null,
    @Arg("tag", () => String, { nullable: true }) _tag: string | null,
    @Arg("rolloutId", () => ID, { nullable: true }) _rolloutId: string | null,
  ): OtaProgress {
    return toOtaProgress(record);
  }
}

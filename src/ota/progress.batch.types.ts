import { Field, Int, ObjectType } from "type-graphql";
import { OtaProgress, toOtaProgress } from "./ota.types.js";
import type { ProgressBatch } from "./progress.batch.js";

@ObjectType({ description: "The latest report of each device that reported within one interval of `otaProgressBatches`.", simpleResolvers: true })
export class OtaProgressBatch {
  @Field(() => [OtaProgress], { description: "One report per device, the latest it sent within the interval, in the order of those reports." })
  reports!: OtaProgress[];

  @Field(() => Int, { description: "Reports of this interval that a newer report of the same device replaced." })
  coalesced!: number;

  @Field(() => Int, {
    description: "Reports of this interval left out because the batch already held 100,000 other devices (only where the broker lets unregistered devices report).",
  })
  dropped!: number;
}

export function toOtaProgressBatch(batch: ProgressBatch): OtaProgressBatch {
  return { reports: batch.reports.map(toOtaProgress), coalesced: batch.coalesced, dropped: batch.dropped };
}

import { DateTimeISOResolver, JSONObjectResolver } from "graphql-scalars";
import { Field, ID, InputType, Int, ObjectType, registerEnumType } from "type-graphql";
import type { FailureReason, OtaState, ProgressRecord } from "./progress.model.js";

export enum OtaStateEnum {
  DOWNLOADING = "DOWNLOADING",
  DOWNLOADED = "DOWNLOADED",
  FAILED = "FAILED",
  SUCCEEDED = "SUCCEEDED",
}
registerEnumType(OtaStateEnum, { name: "OtaState", description: "Where a device's upgrade stands." });

export enum FailureReasonEnum {
  DOWNLOAD_FAILED = "DOWNLOAD_FAILED",
  MD5_MISMATCH = "MD5_MISMATCH",
  INSTALL_FAILED = "INSTALL_FAILED",
  OTHER = "OTHER",
}
registerEnumType(FailureReasonEnum, { name: "FailureReason" });

@ObjectType({ description: "A device's latest OTA progress report.", simpleResolvers: true })
export class OtaProgress {
  @Field(() => String)
  productName!: string;

  @Field(() => String)
  deviceName!: string;

  @Field(() => String, { description: "The firmware version being installed." })
  version!: string;

  @Field(() => String)
  type!: string;

  @Field(() => Int, { description: "0..100 downloaded; negative: the device's failure code." })
  progress!: number;

  @Field(() => String)
  desc!: string;

  @Field(() => OtaStateEnum)
  state!: OtaState;

  @Field(() => FailureReasonEnum, { nullable: true })
  failureReason!: FailureReason | null;

  @Field(() => DateTimeISOResolver)
  receivedAt!: Date;

  @Field(() => String, { description: "The messageId of the report." })
  messageId!: string;

  @Field(() => JSONObjectResolver, { description: "The report as the device sent it." })
  raw!: Record<string, unknown>;
}

export function toOtaProgress(r: ProgressRecord): OtaProgress {
  return { ...r, receivedAt: new Date(r.receivedAt) };
}

@InputType()
export class FirmwareInput {
  @Field(() => String, { description: "http or https URL the device downloads." })
  url!: string;

  @Field(() => String)
  version!: string;

  @Field(() => Int, { description: "Size in bytes." })
  size!: number;

  @Field(() => String, { description: "32 hex characters." })
  md5!: string;

  @Field(() => String, { description: "e.g. firmware" })
  type!: string;
}

@InputType()
export class SendOtaInput {
  @Field(() => String)
  productName!: string;

  @Field(() => String, { nullable: true, description: "Exactly one of deviceName and tag." })
  deviceName?: string | null;

  @Field(() => String, { nullable: true })
  tag?: string | null;

  @Field(() => FirmwareInput, { nullable: true, description: "A firmware hosted elsewhere; or give firmwareId." })
  firmware?: FirmwareInput | null;

  @Field(() => ID, {
    nullable: true,
    description:
      "An uploaded artifact of the product (firmwares): the server fills url, size, md5 and sha256; the url is signed for the device (or tag) and lives as long as the command (ttlSeconds, or OFFLINE_COMMAND_TTL_SECONDS).",
  })
  firmwareId?: string | null;

  @Field(() => Int, { nullable: true, description: "Devices ignore the command after this many seconds." })
  ttlSeconds?: number | null;

  @Field(() => String, {
    nullable: true,
    description:
      "Retrying with the same key (1..128 printable ASCII, kept 24 h per product) never sends twice: it answers the first result; " +
      "REQUEST_IN_PROGRESS while the first is still being sent; COMMAND_UNCONFIRMED if the first was not confirmed (it may still arrive). " +
      "A first attempt that ended in BROKER_UNAVAILABLE (nothing sent) leaves the key free.",
  })
  idempotencyKey?: string | null;
}

@ObjectType()
export class SendOtaResult {
  @Field(() => ID)
  requestId!: string;

  @Field(() => String)
  topic!: string;

  @Field(() => Int, { nullable: true, description: "Unix seconds after which devices ignore the command." })
  expiresAt!: number | null;

  @Field(() => Int, {
    nullable: true,
    description:
      "Registered devices the command reaches now: 1 for a device; for a tag, those holding it (suspended ones excluded), counted after the send; null when the registry could not be read.",
  })
  targeted!: number | null;

  @Field(() => String, { nullable: true, description: "Set when the command reaches no device (a tag nobody holds): sent, but nothing will happen." })
  warning!: string | null;
}

import { DateTimeISOResolver } from "graphql-scalars";
import { Field, ID, Int, ObjectType } from "type-graphql";
import { connectionOf } from "../http/connection.types.js";
import type { Artifact } from "./artifact.model.js";

@ObjectType("Firmware", {
  description: "An uploaded firmware artifact (PUT /firmware/<product>/<version>?type=): sendOta and rollouts take its id, and the server fills url, size, md5 and sha256.",
  simpleResolvers: true,
})
export class FirmwareType {
  @Field(() => ID)
  id!: string;

  @Field(() => String)
  productName!: string;

  @Field(() => String)
  version!: string;

  @Field(() => String)
  type!: string;

  @Field(() => Int, { description: "Bytes, as received." })
  size!: number;

  @Field(() => String, { description: "Of the bytes received, 32 hex characters." })
  md5!: string;

  @Field(() => String, { description: "Of the bytes received, 64 hex characters (its download ETag)." })
  sha256!: string;

  @Field(() => DateTimeISOResolver)
  createdAt!: Date;
}

export const FirmwareConnection = connectionOf(FirmwareType, "Firmware");

export function toFirmwareType(a: Artifact): FirmwareType {
  return { ...a, createdAt: new Date(a.createdAt) };
}

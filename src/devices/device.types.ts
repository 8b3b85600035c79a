import { DateTimeISOResolver, JSONObjectResolver } from "graphql-scalars";
import { Field, InputType, Int, ObjectType } from "type-graphql";
import { connectionOf } from "../http/connection.types.js";

@ObjectType("Device", { description: "A device registered for a product.", simpleResolvers: true })
export class DeviceType {
  @Field(() => String)
  productName!: string;

  @Field(() => String)
  deviceName!: string;

  @Field(() => [String])
  tags!: string[];

  @Field(() => Int, { description: "Bumped on every tag change; devices compare it with what they hold." })
  tagsVersion!: number;

  @Field(() => JSONObjectResolver, { nullable: true, description: "The last `update_status` object the device reported." })
  status!: Record<string, unknown> | null;

  @Field(() => String, { nullable: true, description: "`firmware_ver` from the last status." })
  firmwareVersion!: string | null;

  @Field(() => DateTimeISOResolver, { nullable: true })
  lastStatusAt!: Date | null;

  @Field(() => Boolean)
  suspended!: boolean;

  @Field(() => DateTimeISOResolver)
  createdAt!: Date;
}

@ObjectType()
export class RegisteredDevice {
  @Field(() => DeviceType)
  device!: DeviceType;

  @Field(() => String, { description: "The device's MQTT password. Shown once: only a hash is kept." })
  secret!: string;
}

@InputType()
export class RegisterDeviceInput {
  @Field(() => String)
  productName!: string;

  @Field(() => String, { nullable: true, description: "Generated (an ObjectId) when omitted." })
  deviceName?: string | null;

  @Field(() => [String], { nullable: true })
  tags?: string[] | null;
}

export const DeviceConnection = connectionOf(DeviceType, "Device");

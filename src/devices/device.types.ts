import { DateTimeISOResolver, JSONObjectResolver } from "graphql-scalars";
import { Field, InputType, Int, ObjectType, registerEnumType } from "type-graphql";
import { connectionOf } from "../http/connection.types.js";
import { DEVICE_STATES, type DeviceState } from "./device.model.js";

export const DeviceStateEnum = Object.fromEntries(DEVICE_STATES.map((s) => [s, s])) as { [K in DeviceState]: K };
registerEnumType(DeviceStateEnum, {
  name: "DeviceState",
  description: "ONLINE: connected now; OFFLINE: not connected and not suspended; SUSPENDED: refused until resumed.",
});

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

@ObjectType()
export class FirmwareVersionCount {
  @Field(() => String, { nullable: true, description: "null: the devices have not reported a version yet." })
  firmwareVersion!: string | null;

  @Field(() => Int)
  devices!: number;
}

@ObjectType("Fleet", { description: "A product's devices at a glance, counted at most 2 s ago." })
export class FleetType {
  @Field(() => String)
  productName!: string;

  @Field(() => Int, { description: "Registered devices." })
  devices!: number;

  @Field(() => Int)
  suspended!: number;

  @Field(() => Int, { nullable: true, description: "Devices connected now; null with an external broker (unknown)." })
  online!: number | null;

  @Field(() => [FirmwareVersionCount], { description: "Devices by reported firmware version, most devices first (at most 100 versions)." })
  versions!: FirmwareVersionCount[];
}

import { Arg, Authorized, Int, Mutation, Query, Resolver } from "type-graphql";
import { toConnection, type Connection } from "../http/connection.types.js";
import { DeviceService } from "./device.service.js";
import { DeviceConnection, DeviceType, RegisterDeviceInput, RegisteredDevice } from "./device.types.js";

@Resolver(() => DeviceType)
export class DeviceResolver {
  constructor(private readonly service: DeviceService) {}

  @Authorized("read")
  @Query(() => DeviceType, { nullable: true })
  device(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
  ): Promise<DeviceType | null> {
    return this.service.find(productName, deviceName);
  }

  @Authorized("read")
  @Query(() => DeviceConnection, { description: "Devices of a product, optionally with a tag, by device name." })
  async devices(
    @Arg("productName", () => String) productName: string,
    @Arg("tag", () => String, { nullable: true }) tag: string | null,
    @Arg("first", () => Int, { nullable: true, description: "Page size, 1..1000 (default 50)." }) first: number | null,
    @Arg("after", () => String, { nullable: true }) after: string | null,
  ): Promise<Connection<DeviceType>> {
    const page = await this.service.list(productName, tag, first, after);
    return toConnection(
      page.edges.map((e) => e.device),
      (_, i) => page.edges[i]?.cursor ?? "",
      page.hasNextPage,
    );
  }

  @Authorized("admin")
  @Mutation(() => RegisteredDevice)
  registerDevice(@Arg("input", () => RegisterDeviceInput) input: RegisterDeviceInput): Promise<RegisteredDevice> {
    return this.service.register(input);
  }

  @Authorized("write")
  @Mutation(() => DeviceType, { description: "Replaces the tags, bumps tagsVersion and sends `$set_tags` to the device." })
  setDeviceTags(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
    @Arg("tags", () => [String]) tags: string[],
  ): Promise<DeviceType> {
    return this.service.setTags(productName, deviceName, tags);
  }

  @Authorized("write")
  @Mutation(() => DeviceType, { description: "Disconnects the device and refuses its connections until resumed." })
  suspendDevice(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
  ): Promise<DeviceType> {
    return this.service.setSuspended(productName, deviceName, true);
  }

  @Authorized("write")
  @Mutation(() => DeviceType)
  resumeDevice(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
  ): Promise<DeviceType> {
    return this.service.setSuspended(productName, deviceName, false);
  }

  @Authorized("admin")
  @Mutation(() => Boolean, { description: "Removes the device and its progress; false when there was none." })
  deleteDevice(
    @Arg("productName", () => String) productName: string,
    @Arg("deviceName", () => String) deviceName: string,
  ): Promise<boolean> {
    return this.service.delete(productName, deviceName);
  }
}

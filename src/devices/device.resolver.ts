import DataLoader from "dataloader";
import { Arg, Authorized, Ctx, FieldResolver, Int, Mutation, Query, Resolver, Root } from "type-graphql";
import { DateTimeISOResolver } from "graphql-scalars";
import { PRODUCT_CHECKED_BY_RESOLVER } from "../auth/principal.js";
import type { Context } from "../http/context.js";
import { toConnection, type Connection } from "../http/connection.types.js";
import { deviceLoader } from "../http/loaders.js";
import type { Seen } from "../ota/ports.js";
import type { DeviceState } from "./device.model.js";
import { DeviceService } from "./device.service.js";
import { DeviceConnection, DeviceStateEnum, DeviceType, FleetType, RegisterDeviceInput, RegisteredDevice } from "./device.types.js";

/** Per request: whether devices are online, one Redis round trip per product for a page. */
const onlineLoaders = new WeakMap<Context, DataLoader<string, boolean | null>>();
/** Per request: when devices last connected and disconnected, one Redis round trip per product for a page. */
const seenLoaders = new WeakMap<Context, DataLoader<string, Seen | null>>();

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
  @Query(() => DeviceConnection, { description: "Devices of a product by device name, optionally only those with a tag, a firmware version or in a state." })
  async devices(
    @Arg("productName", () => String) productName: string,
    @Arg("tag", () => String, { nullable: true }) tag: string | null,
    @Arg("firmwareVersion", () => String, { nullable: true, description: "`firmware_ver` of the last status, exactly." }) firmwareVersion: string | null,
    @Arg("state", () => DeviceStateEnum, { nullable: true }) state: DeviceState | null,
    @Arg("first", () => Int, { nullable: true, description: "Page size, 1..1000 (default 50)." }) first: number | null,
    @Arg("after", () => String, { nullable: true }) after: string | null,
  ): Promise<Connection<DeviceType>> {
    const page = await this.service.list(productName, { tag, firmwareVersion, state }, first, after);
    return toConnection(
      page.edges.map((e) => e.device),
      (_, i) => page.edges[i]?.cursor ?? "",
      page.hasNextPage,
      page.endCursor,
    );
  }

  @Authorized("read")
  @Query(() => FleetType, { description: "The product's devices by firmware version, with suspended and online counts." })
  fleet(@Arg("productName", () => String) productName: string): Promise<FleetType> {
    return this.service.fleet(productName);
  }

  @Authorized("read", PRODUCT_CHECKED_BY_RESOLVER)
  @Query(() => [String], { description: "Products with registered devices that this token may read, in order (at most 1,000)." })
  products(@Ctx() ctx: Context): Promise<string[]> {
    return this.service.productNames(ctx.principal.products);
  }

  @FieldResolver(() => Boolean, { nullable: true, description: "Connected now (to any instance); null with an external broker (unknown)." })
  online(@Root() device: DeviceType, @Ctx() ctx: Context): Promise<boolean | null> {
    const loader = deviceLoader(onlineLoaders, ctx, async (productName, names) => (await this.service.online(productName, names)) ?? names.map(() => null));
    return loader.load(`${device.productName}/${device.deviceName}`);
  }

  @FieldResolver(() => DateTimeISOResolver, { nullable: true, description: "When it last connected (to any instance); null: not since this server keeps it, or an external broker." })
  async lastConnectedAt(@Root() device: DeviceType, @Ctx() ctx: Context): Promise<Date | null> {
    const at = (await this.#seen(ctx, device))?.connectedAt ?? null;
    return at === null ? null : new Date(at);
  }

  @FieldResolver(() => DateTimeISOResolver, {
    nullable: true,
    description: "When a connection of it was last closed, as its instance saw it (an instance killed records none: then online says it); null: never, or an external broker.",
  })
  async lastDisconnectedAt(@Root() device: DeviceType, @Ctx() ctx: Context): Promise<Date | null> {
    const at = (await this.#seen(ctx, device))?.disconnectedAt ?? null;
    return at === null ? null : new Date(at);
  }

  #seen(ctx: Context, device: DeviceType): Promise<Seen | null> {
    const loader = deviceLoader(seenLoaders, ctx, async (productName, names) => (await this.service.seen(productName, names)) ?? names.map(() => null));
    return loader.load(`${device.productName}/${device.deviceName}`);
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

import { Arg, Authorized, Ctx, ID, Int, Mutation, Query, Resolver } from "type-graphql";
import { PRODUCT_CHECKED_BY_RESOLVER, refusal, requireAccess } from "../auth/principal.js";
import { AppError, ErrorCode } from "../errors.js";
import type { Context } from "../http/context.js";
import { toConnection, type Connection } from "../http/connection.types.js";
import { ArtifactService } from "./artifact.service.js";
import { FirmwareConnection, FirmwareType, toFirmwareType } from "./artifact.types.js";

@Resolver(() => FirmwareType)
export class ArtifactResolver {
  constructor(private readonly service: ArtifactService) {}

  @Authorized("read")
  @Query(() => FirmwareConnection, { description: "A product's uploaded firmware artifacts, newest first." })
  async firmwares(
    @Arg("productName", () => String) productName: string,
    @Arg("first", () => Int, { nullable: true, description: "1..100, default 50." }) first: number | null,
    @Arg("after", () => String, { nullable: true }) after: string | null,
  ): Promise<Connection<FirmwareType>> {
    const page = await this.service.list(productName, first, after);
    return toConnection(
      page.edges.map((e) => toFirmwareType(e.artifact)),
      (_, i) => page.edges[i]?.cursor ?? "",
      page.hasNextPage,
    );
  }

  @Authorized("read", PRODUCT_CHECKED_BY_RESOLVER)
  @Query(() => FirmwareType, { nullable: true })
  async firmware(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<FirmwareType | null> {
    const artifact = await this.service.find(id);
    // Another product's artifact is as absent as a missing one: a limited token learns nothing of it.
    if (!artifact || refusal(ctx.principal, "read", artifact.productName) !== null) return null;
    return toFirmwareType(artifact);
  }

  @Authorized("admin", PRODUCT_CHECKED_BY_RESOLVER)
  @Mutation(() => FirmwareType, {
    description:
      "Deletes an artifact and its bytes; FIRMWARE_IN_USE while a rollout that is active, or has devices still upgrading, uses it. Commands already sent with it then fail their download.",
  })
  async deleteFirmware(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<FirmwareType> {
    const artifact = await this.service.find(id);
    if (!artifact || refusal(ctx.principal, "read", artifact.productName) !== null) throw new AppError(ErrorCode.NOT_FOUND, `firmware ${id} not found`);
    requireAccess(ctx.principal, "admin", artifact.productName);
    return toFirmwareType(await this.service.delete(id));
  }
}

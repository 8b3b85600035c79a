import DataLoader from "dataloader";
import { Arg, Authorized, Ctx, FieldResolver, ID, Int, Mutation, Query, Resolver, Root, Subscription } from "type-graphql";
import { PRODUCT_CHECKED_BY_RESOLVER, requireAccess, type Access } from "../auth/principal.js";
import { badInput } from "../errors.js";
import type { Context, SubscriptionContext } from "../http/context.js";
import { ACTIVE_ROLLOUT, type ExecutionCounts, type ExecutionState, type FailureClass, type RolloutState } from "./rollout.model.js";
import type { RolloutSnapshot } from "./rollout.feed.js";
import { DeviceType, FleetType } from "../devices/device.types.js";
import { toConnection, type Connection } from "../http/connection.types.js";
import { byProduct } from "../http/loaders.js";
import { OtaService } from "../ota/ota.service.js";
import { OtaProgress, toOtaProgress } from "../ota/ota.types.js";
import { RolloutService, type RolloutInput } from "./rollout.service.js";
import {
  CreateRolloutInput,
  ExecutionConnection,
  ExecutionCountsType,
  ExecutionStateEnum,
  ExecutionType,
  FailureClassEnum,
  RolloutConnection,
  RolloutPreview,
  RolloutStateEnum,
  RolloutType,
  minuteOf,
  toCountsType,
  toExecutionType,
  toRolloutType,
} from "./rollout.types.js";

/** Per request: the counts of every rollout asked for, in one query. */
const countLoaders = new WeakMap<object, DataLoader<string, ExecutionCounts>>();

/** GraphQL input classes → the service's plain input (the window as minutes; no GraphQL-only fields). */
function toInput(input: CreateRolloutInput): RolloutInput {
  const p = input.policy;
  let maintenanceWindow: { startMinute: number; endMinute: number } | null = null;
  if (p?.maintenanceWindow) {
    const startMinute = minuteOf(p.maintenanceWindow.start);
    const endMinute = minuteOf(p.maintenanceWindow.end);
    if (startMinute === null) throw badInput("policy.maintenanceWindow.start", "must be HH:MM (UTC)");
    if (endMinute === null) throw badInput("policy.maintenanceWindow.end", "must be HH:MM (UTC)");
    maintenanceWindow = { startMinute, endMinute };
  }
  const plain = <T extends object>(o: T | null | undefined) => (o == null ? o : { ...o });
  return {
    productName: input.productName,
    name: input.name,
    target: { ...input.target },
    membership: input.membership,
    firmware: input.firmware && { ...input.firmware },
    firmwareId: input.firmwareId,
    policy: p && {
      maxInProgress: p.maxInProgress,
      maxPerMinute: p.maxPerMinute,
      waves: p.waves?.map(plain),
      abortRules: p.abortRules?.map(plain),
      retries: p.retries?.map(plain),
      inProgressTimeoutSeconds: p.inProgressTimeoutSeconds,
      allowDowngrade: p.allowDowngrade,
      allowedFromVersions: p.allowedFromVersions,
      startAt: p.startAt == null ? null : p.startAt.getTime(),
      maintenanceWindow,
    },
  };
}

@Resolver(() => RolloutType)
export class RolloutResolver {
  constructor(private readonly service: RolloutService) {}

  /** Loads the rollout and checks the caller may act on its product with `need`. */
  async #authorized(ctx: Context, id: string, need: Access) {
    const rollout = await this.service.get(id);
    requireAccess(ctx.principal, need, rollout.productName);
    return rollout;
  }

  @Authorized("read")
  @Query(() => RolloutPreview, { description: "What createRollout would do with this input (targets, skipped and why, waves, time); sends nothing." })
  async previewRollout(@Arg("input", () => CreateRolloutInput) input: CreateRolloutInput): Promise<RolloutPreview> {
    const plan = await this.service.preview(toInput(input));
    const skipped = Object.values(plan.skipped).reduce((a, b) => a + b, 0);
    return {
      targeted: plan.targeted,
      eligible: plan.eligible,
      skipped,
      skippedByReason: Object.entries(plan.skipped)
        .filter(([, n]) => n > 0)
        .map(([reason, count]) => ({ reason: reason as RolloutPreview["skippedByReason"][number]["reason"], count })),
      waves: plan.waveSizes.map((size, index) => ({ index, size })),
      startsAt: new Date(plan.estimate.startsAt),
      minimumSeconds: Math.round(plan.estimate.minimumSeconds),
      worstCaseSeconds: Math.round(plan.estimate.worstCaseSeconds),
    };
  }

  @Authorized("write")
  @Mutation(() => RolloutType, { description: "Creates a rollout and starts it (or schedules it for policy.startAt)." })
  async createRollout(@Arg("input", () => CreateRolloutInput) input: CreateRolloutInput): Promise<RolloutType> {
    return toRolloutType(await this.service.create(toInput(input)));
  }

  @Authorized("read", PRODUCT_CHECKED_BY_RESOLVER)
  @Query(() => RolloutType, { nullable: true })
  async rollout(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<RolloutType | null> {
    const rollout = await this.service.find(id);
    if (!rollout) return null;
    requireAccess(ctx.principal, "read", rollout.productName);
    return toRolloutType(rollout);
  }

  @Authorized("read")
  @Query(() => RolloutConnection, { description: "A product's rollouts, newest first." })
  async rollouts(
    @Arg("productName", () => String) productName: string,
    @Arg("states", () => [RolloutStateEnum], { nullable: true }) states: RolloutState[] | null,
    @Arg("first", () => Int, { nullable: true, description: "1..100, default 50." }) first: number | null,
    @Arg("after", () => String, { nullable: true }) after: string | null,
  ): Promise<Connection<RolloutType>> {
    const page = await this.service.list(productName, states, first, after);
    return toConnection(
      page.edges.map((e) => toRolloutType(e.rollout)),
      (_, i) => page.edges[i]?.cursor ?? "",
      page.hasNextPage,
    );
  }

  @Authorized("read", PRODUCT_CHECKED_BY_RESOLVER)
  @Query(() => ExecutionConnection, { description: "A rollout's executions by device name." })
  async rolloutExecutions(
    @Arg("id", () => ID) id: string,
    @Arg("states", () => [ExecutionStateEnum], { nullable: true }) states: ExecutionState[] | null,
    @Arg("first", () => Int, { nullable: true, description: "1..1000, default 50." }) first: number | null,
    @Arg("after", () => String, { nullable: true }) after: string | null,
    @Ctx() ctx: Context,
  ): Promise<Connection<ExecutionType>> {
    await this.#authorized(ctx, id, "read");
    const page = await this.service.executions(id, states, first, after);
    return toConnection(page.rows.map(toExecutionType), (node) => node.deviceName, page.hasNextPage);
  }

  @Authorized("write", PRODUCT_CHECKED_BY_RESOLVER)
  @Mutation(() => RolloutType, { description: "Stops notifying devices; those already notified finish and are recorded." })
  async pauseRollout(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<RolloutType> {
    await this.#authorized(ctx, id, "write");
    return toRolloutType(await this.service.pause(id));
  }

  @Authorized("write", PRODUCT_CHECKED_BY_RESOLVER)
  @Mutation(() => RolloutType)
  async resumeRollout(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<RolloutType> {
    await this.#authorized(ctx, id, "write");
    return toRolloutType(await this.service.resume(id));
  }

  @Authorized("write", PRODUCT_CHECKED_BY_RESOLVER)
  @Mutation(() => RolloutType, {
    description: "Ends the rollout: queued executions are CANCELED, and so are notified ones whose command was still queued for an offline device (embedded broker).",
  })
  async cancelRollout(@Arg("id", () => ID) id: string, @Ctx() ctx: Context): Promise<RolloutType> {
    await this.#authorized(ctx, id, "write");
    return toRolloutType(await this.service.cancel(id));
  }

  @Authorized("write", PRODUCT_CHECKED_BY_RESOLVER)
  @Mutation(() => RolloutType, { description: "Queues failed executions of these classes (all when omitted) again; an ended rollout runs again." })
  async retryRollout(
    @Arg("id", () => ID) id: string,
    @Arg("failureClasses", () => [FailureClassEnum], { nullable: true }) failureClasses: FailureClass[] | null,
    @Ctx() ctx: Context,
  ): Promise<RolloutType> {
    await this.#authorized(ctx, id, "write");
    return toRolloutType((await this.service.retry(id, failureClasses)).rollout);
  }

  @FieldResolver(() => ExecutionCountsType, { description: "Executions per state and failure class, now." })
  async counts(@Root() rollout: RolloutType, @Ctx() ctx: Context): Promise<ExecutionCountsType> {
    if (rollout.counts) return rollout.counts;
    let loader = countLoaders.get(ctx);
    if (!loader) {
      loader = new DataLoader((ids: readonly string[]) => this.service.countsOfMany(ids));
      countLoaders.set(ctx, loader);
    }
    return toCountsType(await loader.load(rollout.id));
  }

  @Authorized("read", PRODUCT_CHECKED_BY_RESOLVER)
  @Subscription(() => RolloutType, {
    description: "The rollout with its counts now, then each time they change (at most a few times a second); completes once it has ended and no device of it is still in progress.",
    subscribe: async ({ args, context }) => {
      const ctx = context as SubscriptionContext;
      const snapshot = await ctx.rollouts.snapshot(args.id as string);
      requireAccess(ctx.principal, "read", snapshot.rollout.productName);
      return ctx.rolloutFeed.watch(snapshot.rollout.id, snapshot);
    },
  })
  rolloutChanged(@Root() snapshot: RolloutSnapshot, @Arg("id", () => ID) _id: string): RolloutType {
    return toRolloutType(snapshot.rollout, snapshot.counts);
  }
}

/** Per request: devices' executions and progress, one query per product for all the devices asked. */
const deviceLoaders = new WeakMap<object, { executions: DataLoader<string, ExecutionType[]>; progress: DataLoader<string, OtaProgress | null> }>();

/** Rollout and progress fields of Device, batched: a page of devices costs one SQL and one Redis round trip. */
@Resolver(() => DeviceType)
export class DeviceRolloutResolver {
  constructor(
    private readonly rollouts: RolloutService,
    private readonly ota: OtaService,
  ) {}

  #loaders(ctx: Context) {
    let loaders = deviceLoaders.get(ctx);
    if (!loaders) {
      loaders = {
        executions: new DataLoader((keys: readonly string[]) =>
          byProduct(keys, async (productName, names) => {
            const rows = await this.rollouts.executionsOfDevices(productName, names);
            return names.map((n) => (rows.get(n) ?? []).map(toExecutionType));
          }),
        ),
        progress: new DataLoader((keys: readonly string[]) =>
          byProduct(keys, async (productName, names) => (await this.ota.progressOfMany(productName, names)).map((r) => r && toOtaProgress(r))),
        ),
      };
      deviceLoaders.set(ctx, loaders);
    }
    return loaders;
  }

  @FieldResolver(() => [ExecutionType], { description: "The device's executions across rollouts, newest rollout first (the latest 20)." })
  executions(@Root() device: DeviceType, @Ctx() ctx: Context): Promise<ExecutionType[]> {
    return this.#loaders(ctx).executions.load(`${device.productName}/${device.deviceName}`);
  }

  @FieldResolver(() => OtaProgress, { nullable: true, description: "The device's latest OTA progress report." })
  otaProgress(@Root() device: DeviceType, @Ctx() ctx: Context): Promise<OtaProgress | null> {
    return this.#loaders(ctx).progress.load(`${device.productName}/${device.deviceName}`);
  }
}

@Resolver(() => FleetType)
export class FleetRolloutResolver {
  constructor(private readonly rollouts: RolloutService) {}

  @FieldResolver(() => [RolloutType], { description: "Scheduled, running and paused rollouts of the product, newest first (at most 100)." })
  async activeRollouts(@Root() fleet: FleetType): Promise<RolloutType[]> {
    const page = await this.rollouts.list(fleet.productName, ACTIVE_ROLLOUT, 100, null);
    return page.edges.map((e) => toRolloutType(e.rollout));
  }
}

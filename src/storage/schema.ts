import { sql } from "drizzle-orm";
import { bigint, boolean, index, integer, jsonb, pgTable, primaryKey, text, timestamp, uniqueIndex, uuid } from "drizzle-orm/pg-core";

export const devices = pgTable(
  "devices",
  {
    productName: text("product_name").notNull(),
    deviceName: text("device_name").notNull(),
    secretHash: text("secret_hash").notNull(),
    tags: text("tags").array().notNull().default(sql`'{}'::text[]`),
    tagsVersion: integer("tags_version").notNull().default(1),
    status: jsonb("status").$type<Record<string, unknown>>(),
    /** The server's receive order of the stored `update_status` report (statusOrder): an earlier-received one never overwrites it. */
    statusOrder: text("status_order"),
    statusAt: timestamp("status_at", { withTimezone: true }),
    suspended: boolean("suspended").notNull().default(false),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.productName, t.deviceName] }),
    index("devices_tags_idx").using("gin", t.tags),
  ],
);

export const apiTokens = pgTable("api_tokens", {
  id: uuid("id").primaryKey().defaultRandom(),
  name: text("name").notNull(),
  /** SHA-256 of the token: tokens are 256 random bits, so a fast hash is enough. */
  tokenHash: text("token_hash").notNull().unique(),
  /** One access level, `read`, `write` or `admin` (src/auth/principal.ts), as a one-element list. */
  scopes: text("scopes").array().notNull(),
  /** The products the token is limited to; null: every product. */
  products: text("products").array(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  expiresAt: timestamp("expires_at", { withTimezone: true }),
  revokedAt: timestamp("revoked_at", { withTimezone: true }),
});

/** A staged upgrade of many devices (src/rollouts/rollout.model.ts); target, firmware and policy as written at creation. */
export const rollouts = pgTable(
  "rollouts",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    productName: text("product_name").notNull(),
    name: text("name").notNull(),
    target: jsonb("target").$type<Record<string, unknown>>().notNull(),
    membership: text("membership").notNull(),
    firmware: jsonb("firmware").$type<Record<string, unknown>>().notNull(),
    policy: jsonb("policy").$type<Record<string, unknown>>().notNull(),
    state: text("state").notNull(),
    /** The highest wave whose devices may be notified. */
    openWave: integer("open_wave").notNull().default(0),
    waveReadyAt: timestamp("wave_ready_at", { withTimezone: true, mode: "date" }),
    abortedBy: jsonb("aborted_by").$type<Record<string, unknown>>(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    startedAt: timestamp("started_at", { withTimezone: true }),
    finishedAt: timestamp("finished_at", { withTimezone: true }),
  },
  (t) => [index("rollouts_product_idx").on(t.productName, t.createdAt), index("rollouts_state_idx").on(t.state)],
);

/** One device in one rollout: its state machine's state (src/rollouts/execution.machine.ts). */
export const rolloutExecutions = pgTable(
  "rollout_executions",
  {
    rolloutId: uuid("rollout_id")
      .notNull()
      .references(() => rollouts.id, { onDelete: "cascade" }),
    productName: text("product_name").notNull(),
    deviceName: text("device_name").notNull(),
    wave: integer("wave").notNull(),
    state: text("state").notNull(),
    failureClass: text("failure_class"),
    skipReason: text("skip_reason"),
    fromVersion: text("from_version"),
    /** Every command sent, oldest first: `{requestId, notifiedAt, outcome, endedAt}`. */
    attempts: jsonb("attempts").$type<unknown[]>().notNull().default(sql`'[]'::jsonb`),
    /** QUEUED with this set: the command is being sent (claimed by a scheduler at `dispatchedAt`). */
    dispatchRequestId: text("dispatch_request_id"),
    dispatchedAt: timestamp("dispatched_at", { withTimezone: true }),
    notBefore: timestamp("not_before", { withTimezone: true }),
    lastEventAt: timestamp("last_event_at", { withTimezone: true }).notNull().defaultNow(),
    /** Bumped by every write: updates are compare-and-set on it, so instances never overwrite each other. */
    seq: integer("seq").notNull().default(0),
  },
  (t) => [
    primaryKey({ columns: [t.rolloutId, t.deviceName] }),
    index("rollout_executions_device_idx").on(t.productName, t.deviceName),
    index("rollout_executions_state_idx").on(t.rolloutId, t.state, t.wave),
  ],
);

/** An uploaded firmware artifact (src/firmware/): its bytes are in the artifact store under its id, visible once this row exists. */
export const firmwares = pgTable(
  "firmwares",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    productName: text("product_name").notNull(),
    version: text("version").notNull(),
    type: text("type").notNull(),
    size: bigint("size", { mode: "number" }).notNull(),
    md5: text("md5").notNull(),
    sha256: text("sha256").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("firmwares_version_idx").on(t.productName, t.version, t.type),
    index("firmwares_product_idx").on(t.productName, t.createdAt, t.id),
  ],
);

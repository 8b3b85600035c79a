import { sql } from "drizzle-orm";
import { boolean, index, integer, jsonb, pgTable, primaryKey, text, timestamp, uuid } from "drizzle-orm/pg-core";

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

CREATE TABLE "firmwares" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"product_name" text NOT NULL,
	"version" text NOT NULL,
	"type" text NOT NULL,
	"size" bigint NOT NULL,
	"md5" text NOT NULL,
	"sha256" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "firmwares_version_idx" ON "firmwares" USING btree ("product_name","version","type");--> statement-breakpoint
CREATE INDEX "firmwares_product_idx" ON "firmwares" USING btree ("product_name","created_at","id");
CREATE TABLE "api_tokens" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"name" text NOT NULL,
	"token_hash" text NOT NULL,
	"scopes" text[] NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "api_tokens_token_hash_unique" UNIQUE("token_hash")
);
--> statement-breakpoint
CREATE TABLE "devices" (
	"product_name" text NOT NULL,
	"device_name" text NOT NULL,
	"secret_hash" text NOT NULL,
	"tags" text[] DEFAULT '{}'::text[] NOT NULL,
	"tags_version" integer DEFAULT 1 NOT NULL,
	"status" jsonb,
	"status_order" text,
	"status_at" timestamp with time zone,
	"suspended" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "devices_product_name_device_name_pk" PRIMARY KEY("product_name","device_name")
);
--> statement-breakpoint
CREATE INDEX "devices_tags_idx" ON "devices" USING gin ("tags");
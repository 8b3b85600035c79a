CREATE TABLE "rollout_executions" (
	"rollout_id" uuid NOT NULL,
	"product_name" text NOT NULL,
	"device_name" text NOT NULL,
	"wave" integer NOT NULL,
	"state" text NOT NULL,
	"failure_class" text,
	"skip_reason" text,
	"from_version" text,
	"attempts" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"dispatch_request_id" text,
	"dispatched_at" timestamp with time zone,
	"not_before" timestamp with time zone,
	"last_event_at" timestamp with time zone DEFAULT now() NOT NULL,
	"seq" integer DEFAULT 0 NOT NULL,
	CONSTRAINT "rollout_executions_rollout_id_device_name_pk" PRIMARY KEY("rollout_id","device_name")
);
--> statement-breakpoint
CREATE TABLE "rollouts" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"product_name" text NOT NULL,
	"name" text NOT NULL,
	"target" jsonb NOT NULL,
	"membership" text NOT NULL,
	"firmware" jsonb NOT NULL,
	"policy" jsonb NOT NULL,
	"state" text NOT NULL,
	"open_wave" integer DEFAULT 0 NOT NULL,
	"wave_ready_at" timestamp with time zone,
	"aborted_by" jsonb,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone,
	"finished_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "rollout_executions" ADD CONSTRAINT "rollout_executions_rollout_id_rollouts_id_fk" FOREIGN KEY ("rollout_id") REFERENCES "public"."rollouts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "rollout_executions_device_idx" ON "rollout_executions" USING btree ("product_name","device_name");--> statement-breakpoint
CREATE INDEX "rollout_executions_state_idx" ON "rollout_executions" USING btree ("rollout_id","state","wave");--> statement-breakpoint
CREATE INDEX "rollouts_product_idx" ON "rollouts" USING btree ("product_name","created_at");--> statement-breakpoint
CREATE INDEX "rollouts_state_idx" ON "rollouts" USING btree ("state");
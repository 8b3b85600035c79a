import type { Principal } from "../auth/principal.js";
import type { ProgressFeed } from "../ota/progress.feed.js";
import type { RolloutFeed } from "../rollouts/rollout.feed.js";
import type { RolloutService } from "../rollouts/rollout.service.js";

/** What every resolver receives: the authenticated caller. */
export interface Context {
  principal: Principal;
}

/** Subscriptions read their sources from the context: type-graphql calls `subscribe` without a resolver instance. */
export interface SubscriptionContext extends Context {
  progressFeed: ProgressFeed;
  rolloutFeed: RolloutFeed;
  rollouts: RolloutService;
}

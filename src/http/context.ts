import type { Principal } from "../auth/principal.js";

/** What every resolver receives: the authenticated caller. */
export interface Context {
  principal: Principal;
}

import { useCallback, useEffect, useState } from "react";
import { useClient, useQuery, type CombinedError } from "urql";
import { RolloutChangedDocument, RolloutDocument, type RolloutFieldsFragment } from "../../src/client/generated/graphql.js";

/**
 * The rollout as `rolloutChanged` pushes it (coalesced by the server to a few a
 * second), null until the first push. The subscription completes when the
 * rollout has ended; a new `epoch` subscribes anew (a retry may run it again).
 */
export function useRolloutPushes(id: string, active = true, epoch = 0) {
  const client = useClient();
  const [pushed, setPushed] = useState<RolloutFieldsFragment | null>(null);
  const [error, setError] = useState<CombinedError>();
  useEffect(() => {
    if (!active) return;
    setError(undefined);
    const { unsubscribe } = client.subscription(RolloutChangedDocument, { id }).subscribe((r) => {
      if (r.error) setError(r.error);
      else if (r.data) setPushed(r.data.rolloutChanged);
    });
    return unsubscribe;
  }, [client, id, active, epoch]);
  return { pushed, setPushed, error };
}

/** A rollout as it is now: read once, then live. An action's answer (pause, resume, ...) is shown at once with `show`, then `restart` resubscribes. */
export function useLiveRollout(id: string) {
  const [query] = useQuery({ query: RolloutDocument, variables: { id } });
  const [epoch, setEpoch] = useState(0);
  const { pushed, setPushed, error: liveError } = useRolloutPushes(id, true, epoch);
  const restart = useCallback(() => setEpoch((e) => e + 1), []);
  const rollout = pushed ?? query.data?.rollout ?? null;
  return { rollout, fetching: query.fetching && !rollout, error: query.error, liveError, show: setPushed, restart };
}

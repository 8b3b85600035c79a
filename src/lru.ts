/**
 * lru-cache's options for a cache of at most `entries` entries that takes
 * memory as it fills: with `max`, lru-cache allocates every slot up front
 * (the server's caches would hold about 10 MB while empty).
 */
export const upTo = (entries: number) => ({ maxSize: entries, sizeCalculation: () => 1 });

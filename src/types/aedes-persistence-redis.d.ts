declare module "aedes-persistence-redis" {
  import type { Redis } from "ioredis";
  interface Options {
    conn?: Redis;
    maxSessionDelivery?: number;
    packetTTL?: (packet: unknown) => number;
  }
  interface RedisPersistence {
    destroy(): Promise<void>;
    addSubscriptions(client: { id: string }, subs: { topic: string; qos: 0 | 1 | 2 }[]): Promise<unknown>;
    cleanSubscriptions(client: { id: string }): Promise<unknown>;
  }
  export default function persistence(options?: Options): RedisPersistence;
}

declare module "aedes-persistence-redis" {
  import type { Redis } from "ioredis";
  interface Options {
    conn?: Redis;
    maxSessionDelivery?: number;
    packetTTL?: (packet: unknown) => number;
  }
  interface RedisPersistence {
    destroy(): Promise<void>;
  }
  export default function persistence(options?: Options): RedisPersistence;
}

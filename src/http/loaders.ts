import DataLoader from "dataloader";
/** DataLoader batches of devices, keyed `<product>/<device>`. */

/** Runs `load` once per product over DataLoader keys `<product>/<device>`, answering in key order. */
export async function byProduct<T>(keys: readonly string[], load: (productName: string, deviceNames: string[]) => Promise<T[]>): Promise<T[]> {
  const groups = new Map<string, { names: string[]; at: number[] }>();
  keys.forEach((key, i) => {
    const [productName, deviceName] = key.split("/") as [string, string];
    const g = groups.get(productName) ?? { names: [], at: [] };
    g.names.push(deviceName);
    g.at.push(i);
    groups.set(productName, g);
  });
  const out = new Array<T>(keys.length);
  await Promise.all(
    [...groups].map(async ([productName, g]) => {
      const values = await load(productName, g.names);
      g.at.forEach((i, j) => (out[i] = values[j] as T));
    }),
  );
  return out;
}

/** The request's DataLoader (one per context in `loaders`) over devices keyed `<product>/<device>`, loading a product at a time. */
export function deviceLoader<T>(loaders: WeakMap<object, DataLoader<string, T>>, ctx: object, load: (productName: string, deviceNames: string[]) => Promise<T[]>): DataLoader<string, T> {
  let loader = loaders.get(ctx);
  if (!loader) loaders.set(ctx, (loader = new DataLoader((keys: readonly string[]) => byProduct(keys, load))));
  return loader;
}

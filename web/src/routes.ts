import { useEffect, useState } from "react";

/** Every URL of the dashboard, built in one place. */
const p = (product: string) => `/products/${encodeURIComponent(product)}`;

export const routes = {
  home: "/",
  fleet: p,
  devices: (product: string) => `${p(product)}/devices`,
  device: (product: string, device: string) => `${p(product)}/devices/${encodeURIComponent(device)}`,
  rollouts: (product: string) => `${p(product)}/rollouts`,
  newRollout: (product: string) => `${p(product)}/rollouts/new`,
  rollout: (id: string) => `/rollouts/${encodeURIComponent(id)}`,
};

/** The product last opened, for links from pages that have none in their URL. */
const LAST_PRODUCT = "iothub-ota.product";
export const lastProduct = () => sessionStorage.getItem(LAST_PRODUCT);
const PRODUCT_EVENT = "iothub-ota:product";
export function rememberProduct(product: string): void {
  if (sessionStorage.getItem(LAST_PRODUCT) === product) return;
  sessionStorage.setItem(LAST_PRODUCT, product);
  window.dispatchEvent(new Event(PRODUCT_EVENT));
}
/** The last product, re-rendering when a page without one in its URL (a rollout's) learns it. */
export function useLastProduct(): string | null {
  const [product, setProduct] = useState(lastProduct);
  useEffect(() => {
    const update = () => setProduct(lastProduct());
    window.addEventListener(PRODUCT_EVENT, update);
    return () => window.removeEventListener(PRODUCT_EVENT, update);
  }, []);
  return product;
}

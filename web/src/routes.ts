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
export const rememberProduct = (product: string) => sessionStorage.setItem(LAST_PRODUCT, product);

import { useEffect, type ReactNode } from "react";
import { useQuery } from "urql";
import { Link, useLocation, useRoute } from "wouter";
import { ProductsDocument } from "../../src/client/generated/graphql.js";
import { useSession } from "./auth.js";
import { rememberProduct, routes, useLastProduct } from "./routes.js";

function NavLink({ href, children, exact }: { href: string; children: ReactNode; exact?: boolean }) {
  const [location] = useLocation();
  const active = exact ? location === href : location === href || location.startsWith(`${href}/`);
  return (
    <Link href={href} className={`nav-link ${active ? "active" : ""}`}>
      {children}
    </Link>
  );
}

function ProductSwitcher({ product }: { product: string | null }) {
  const [, navigate] = useLocation();
  const [{ data }] = useQuery({ query: ProductsDocument, variables: {} });
  return (
    <form
      className="product-switcher"
      onSubmit={(e) => {
        e.preventDefault();
        const value = String(new FormData(e.currentTarget).get("product") ?? "").trim();
        if (value) navigate(routes.fleet(value));
      }}
    >
      <label htmlFor="product-switch">Product</label>
      <input id="product-switch" name="product" key={product} defaultValue={product ?? ""} placeholder="product name" list="known-products" />
      <datalist id="known-products">
        {data?.products.map((p) => (
          <option key={p} value={p} />
        ))}
      </datalist>
    </form>
  );
}

/** The console's frame: brand, the product's sections, the product switcher, sign out. */
export function Layout({ children }: { children: ReactNode }) {
  const session = useSession();
  const [, params] = useRoute<{ product: string }>("/products/:product/*?");
  const remembered = useLastProduct();
  const product = params?.product ?? remembered;
  useEffect(() => {
    if (params?.product) rememberProduct(params.product);
  }, [params?.product]);
  return (
    <div className="shell">
      <header className="topbar">
        <Link href={routes.home} className="brand">
          <span className="brand-mark" aria-hidden>
            ⬇
          </span>
          iothub-ota
        </Link>
        <nav className="nav">
          {product && (
            <>
              <NavLink href={routes.fleet(product)} exact>
                Fleet
              </NavLink>
              <NavLink href={routes.devices(product)}>Devices</NavLink>
              <NavLink href={routes.rollouts(product)}>Rollouts</NavLink>
            </>
          )}
        </nav>
        <div className="topbar-right">
          <ProductSwitcher product={product} />
          <button type="button" className="btn btn-ghost" onClick={session.signOut}>
            Sign out
          </button>
        </div>
      </header>
      <main className="page">{children}</main>
    </div>
  );
}

import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { Provider } from "urql";
import { ProductsDocument } from "../../src/client/generated/graphql.js";
import { createApi, problemsOf, type Api, type ApiProblem } from "./api.js";

/** The token lives for this browser session only: sessionStorage, never localStorage or a cookie. */
const TOKEN_KEY = "iothub-ota.token";

interface Session {
  signOut(): void;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error("useSession outside <Authenticated>");
  return s;
}

/** Checks a token against the API: null when accepted, else what the API said. */
export async function checkToken(token: string): Promise<ApiProblem[] | null> {
  const api = createApi(token);
  try {
    const result = await api.client.query(ProductsDocument, {}, { requestPolicy: "network-only" }).toPromise();
    return result.error ? problemsOf(result.error) : null;
  } finally {
    api.dispose();
  }
}

/** Renders `children` with an API client once signed in, else the sign-in page. */
export function Authenticated({ children, signIn }: { children: ReactNode; signIn: (onToken: (token: string) => void) => ReactNode }) {
  const [token, setToken] = useState<string | null>(() => sessionStorage.getItem(TOKEN_KEY));
  const api: Api | null = useMemo(() => (token ? createApi(token) : null), [token]);
  useEffect(() => () => api?.dispose(), [api]);
  const signOut = useCallback(() => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
  }, []);
  const session = useMemo(() => ({ signOut }), [signOut]);
  if (!api) {
    return signIn((t) => {
      sessionStorage.setItem(TOKEN_KEY, t);
      setToken(t);
    });
  }
  return (
    <SessionContext.Provider value={session}>
      <Provider value={api.client}>{children}</Provider>
    </SessionContext.Provider>
  );
}

import { useState } from "react";
import type { ApiProblem } from "../api.js";
import { checkToken } from "../auth.js";
import { Problems } from "../components/errors.js";

/** Sign-in with an API token; a refused one shows what the API said. */
export function SignInPage({ onToken }: { onToken: (token: string) => void }) {
  const [problems, setProblems] = useState<ApiProblem[] | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <div className="signin">
      <form
        className="signin-card"
        onSubmit={async (e) => {
          e.preventDefault();
          const token = String(new FormData(e.currentTarget).get("token") ?? "").trim();
          setBusy(true);
          setProblems(null);
          try {
            const refused = await checkToken(token);
            if (refused) setProblems(refused);
            else onToken(token);
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1>
          <span className="brand-mark" aria-hidden>
            ⬇
          </span>{" "}
          iothub-ota
        </h1>
        <p className="muted">Firmware rollouts, live. Sign in with an API token (<code>iothub-ota token create</code>, or the admin token printed on first start).</p>
        <label htmlFor="token">API token</label>
        <input id="token" name="token" type="password" autoComplete="off" required autoFocus placeholder="iot_…" />
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {busy ? "Checking…" : "Sign in"}
        </button>
        {problems && <Problems problems={problems} />}
        <p className="muted small">The token is kept for this browser tab's session only.</p>
      </form>
    </div>
  );
}

import { Component, type ErrorInfo, type ReactNode } from "react";
import type { CombinedError } from "urql";
import { isUnauthenticated, problemsOf, type ApiProblem } from "../api.js";
import { useSession } from "../auth.js";

/** API errors as the API said them: `extensions.code`, then the message. */
export function Problems({ problems }: { problems: readonly ApiProblem[] }) {
  return (
    <div className="alert alert-error" role="alert">
      {problems.map((p, i) => (
        <div key={i}>
          <code className="code">{p.code}</code> {p.message}
          {p.field && <span className="muted"> (field: {p.field})</span>}
        </div>
      ))}
    </div>
  );
}

export function ApiError({ error }: { error: CombinedError | undefined }) {
  const session = useSession();
  if (!error) return null;
  return (
    <>
      <Problems problems={problemsOf(error)} />
      {isUnauthenticated(error) && (
        <p>
          The token is no longer accepted.{" "}
          <button type="button" className="btn" onClick={session.signOut}>
            Sign in again
          </button>
        </p>
      )}
    </>
  );
}

/** A render error shows what happened and a way back, never a blank page. */
export class ErrorBoundary extends Component<{ children: ReactNode }, { error: Error | null }> {
  override state: { error: Error | null } = { error: null };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  override componentDidCatch(error: Error, info: ErrorInfo) {
    console.error(`dashboard render error: ${error.stack}\n${info.componentStack}`);
  }

  override render() {
    if (!this.state.error) return this.props.children;
    return (
      <main className="page">
        <h1>Something went wrong on this page</h1>
        <Problems problems={[{ code: "DASHBOARD_ERROR", message: this.state.error.message }]} />
        <p>
          <button type="button" className="btn" onClick={() => this.setState({ error: null })}>
            Try again
          </button>{" "}
          <a className="btn" href="/">
            Back to the fleet
          </a>
        </p>
      </main>
    );
  }
}

import { useEffect, useRef, useState, type CSSProperties, type FormEvent } from "react";
import { createRoot } from "react-dom/client";

/**
 * Asks for the API's bearer token when the server answers 401 (it runs with
 * AUTH_TOKEN_HASHES). The token is kept in sessionStorage: for this browser tab only,
 * gone when it closes. Behind a single sign-on proxy that injects the token the server
 * never answers 401 and this never shows.
 *
 * Mounted on demand by `requestToken` (api/client.ts calls it): no component tree needs
 * to render it.
 */

export const TOKEN_STORAGE_KEY = "cspine-triage.api-token";

/** The token this tab holds, if any (null where sessionStorage is unavailable). */
export function storedToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_STORAGE_KEY);
  } catch {
    return null;
  }
}

export function storeToken(token: string | null): void {
  try {
    if (token) window.sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_STORAGE_KEY);
  } catch {
    /* storage disabled: the token lives until the page is reloaded */
  }
}

// Inline styles set through the DOM (allowed by the app's strict CSP); colours from the
// app's own custom properties.
const backdrop: CSSProperties = {
  position: "fixed",
  inset: 0,
  background: "rgb(16 24 40 / 45%)",
  display: "flex",
  alignItems: "center",
  justifyContent: "center",
  zIndex: 1000,
};
const panel: CSSProperties = {
  background: "var(--surface, #fff)",
  color: "var(--text, #16202c)",
  borderRadius: "var(--radius, 10px)",
  padding: "1.25rem 1.5rem",
  width: "min(26rem, 92vw)",
  boxShadow: "0 8px 30px rgb(16 24 40 / 25%)",
};
const field: CSSProperties = { width: "100%", padding: "0.5rem", margin: "0.5rem 0 1rem", font: "inherit" };
const actions: CSSProperties = { display: "flex", gap: "0.5rem", justifyContent: "flex-end" };

interface TokenPromptProps {
  /** The server's 401 detail, or why the last token was refused. */
  reason: string | null;
  onDone: (token: string | null) => void;
}

export function TokenPrompt({ reason, onDone }: TokenPromptProps) {
  const [token, setToken] = useState("");
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);

  function submit(event: FormEvent) {
    event.preventDefault();
    const value = token.trim();
    if (value) onDone(value);
  }

  return (
    <div style={backdrop} data-testid="token-prompt">
      <form
        style={panel}
        role="dialog"
        aria-modal="true"
        aria-labelledby="token-prompt-title"
        onSubmit={submit}
        onKeyDown={(event) => event.key === "Escape" && onDone(null)}
      >
        <h2 id="token-prompt-title" style={{ marginTop: 0 }}>
          Access token required
        </h2>
        <p>
          This server only answers authorised users. Enter the access token you were given; it is kept for this
          browser tab only.
        </p>
        {reason && <p className="muted">Server says: {reason}</p>}
        <label htmlFor="token-prompt-input">Access token</label>
        <input
          id="token-prompt-input"
          ref={input}
          type="password"
          autoComplete="off"
          style={field}
          value={token}
          onChange={(event) => setToken(event.target.value)}
          data-testid="token-prompt-input"
        />
        <div style={actions}>
          <button type="button" className="btn btn--ghost" onClick={() => onDone(null)}>
            Cancel
          </button>
          <button type="submit" className="btn btn--primary" disabled={!token.trim()}>
            Continue
          </button>
        </div>
      </form>
    </div>
  );
}

let pending: Promise<string | null> | null = null;

/**
 * Show the prompt (once, however many requests were refused at the same time) and resolve
 * to the token entered (stored in sessionStorage), or null when the user cancels.
 */
export function requestToken(reason: string | null = null): Promise<string | null> {
  if (pending) return pending;
  pending = new Promise<string | null>((resolve) => {
    const host = document.createElement("div");
    document.body.appendChild(host);
    const root = createRoot(host);
    const done = (token: string | null) => {
      storeToken(token);
      root.unmount();
      host.remove();
      pending = null;
      resolve(token);
    };
    root.render(<TokenPrompt reason={reason} onDone={done} />);
  });
  return pending;
}

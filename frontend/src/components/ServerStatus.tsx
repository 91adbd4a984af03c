import type { ServerState } from "../api/client";

const TEXT: Record<ServerState | "checking", string> = {
  checking: "Checking server…",
  ready: "Model ready",
  loading: "Model loading…",
  unreachable: "Server unreachable",
};

export function ServerStatus({ state }: { state: ServerState | "checking" }) {
  return (
    <p className={`status status--${state}`} role="status" data-testid="server-status">
      <span className="status__dot" aria-hidden="true" />
      {TEXT[state]}
    </p>
  );
}

import { afterEach, describe, expect, it, vi } from "vitest";
import { fireEvent, screen, waitFor } from "@testing-library/react";
import { getModelCard } from "../api/client";
import { TOKEN_STORAGE_KEY } from "./TokenPrompt";

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

afterEach(() => {
  vi.unstubAllGlobals();
  window.sessionStorage.clear();
});

describe("bearer token (AUTH_TOKEN_HASHES)", () => {
  it("asks for the token on a 401, retries with it and keeps it for the tab", async () => {
    const seen: (string | null)[] = [];
    const fetchMock = vi.fn(async (_input: RequestInfo | URL, init?: RequestInit) => {
      const auth = new Headers(init?.headers).get("Authorization");
      seen.push(auth);
      return auth === "Bearer right" ? json({ name: "m" }) : json({ detail: "authentication required" }, 401);
    });
    vi.stubGlobal("fetch", fetchMock);

    const card = getModelCard();
    const input = await screen.findByTestId("token-prompt-input");
    expect(screen.getByText(/authentication required/)).toBeInTheDocument();
    fireEvent.change(input, { target: { value: "right" } });
    fireEvent.submit(input.closest("form")!);
    await expect(card).resolves.toEqual({ name: "m" });
    expect(window.sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBe("right");
    await waitFor(() => expect(screen.queryByTestId("token-prompt")).not.toBeInTheDocument());

    await getModelCard(); // sent with the stored token at once
    expect(seen).toEqual([null, "Bearer right", "Bearer right"]);
  });

  it("gives up with a 401 ApiError when the prompt is cancelled", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => json({ detail: "authentication required" }, 401)));
    const card = getModelCard();
    fireEvent.click(await screen.findByText("Cancel"));
    await expect(card).rejects.toMatchObject({ status: 401 });
    expect(window.sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBeNull();
  });

  it("sends requests unchanged when the server never asks", async () => {
    const fetchMock = vi.fn(async () => json({ name: "m" }));
    vi.stubGlobal("fetch", fetchMock);
    await getModelCard();
    const init = fetchMock.mock.calls[0] as unknown as [string, RequestInit];
    expect(init[1].headers).toEqual({ Accept: "application/json" });
  });
});

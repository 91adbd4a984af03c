// @vitest-environment node
// The committed API types must be exactly what the current backend's schema produces,
// so the web app and the API cannot drift apart. Fix a failure with `npm run gen:api`.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { OPENAPI_JSON, SCHEMA_TS, dumpOpenapi, generateTypes } from "./api-schema.mjs";

const HOW = "the backend's API changed: run `npm run gen:api` in frontend/ and commit the result";

describe("API schema drift", () => {
  let dir;
  afterAll(() => dir && rm(dir, { recursive: true, force: true }));

  it("committed openapi.json and schema.d.ts match the current backend", async () => {
    dir = await mkdtemp(join(tmpdir(), "openapi-"));
    const current = await dumpOpenapi(join(dir, "openapi.json"));
    const committedJson = await readFile(OPENAPI_JSON, "utf-8");
    expect(JSON.parse(committedJson), `openapi.json is stale: ${HOW}`).toEqual(JSON.parse(current));
    const committedTs = await readFile(SCHEMA_TS, "utf-8");
    const expected = await generateTypes(JSON.parse(current));
    expect(committedTs, `src/api/schema.d.ts is stale: ${HOW}`).toBe(expected);
  }, 180_000);
});

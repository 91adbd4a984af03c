// npm run gen:api            dump the backend's schema to openapi.json, regenerate schema.d.ts
// npm run gen:api -- --offline   only regenerate schema.d.ts from the committed openapi.json
import { readFile, writeFile } from "node:fs/promises";
import { OPENAPI_JSON, SCHEMA_TS, dumpOpenapi, generateTypes } from "./api-schema.mjs";

const offline = process.argv.includes("--offline");
const text = offline ? await readFile(OPENAPI_JSON, "utf-8") : await dumpOpenapi(OPENAPI_JSON);
await writeFile(SCHEMA_TS, await generateTypes(JSON.parse(text)));
console.log(`${offline ? "read" : "wrote"} ${OPENAPI_JSON}\nwrote ${SCHEMA_TS}`);

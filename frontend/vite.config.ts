import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The FastAPI backend serves the built app (frontend/dist) and the API on one origin.
// In development, `npm run dev` proxies the API paths to it (override with API_TARGET).
const apiTarget = process.env.API_TARGET ?? "http://127.0.0.1:8000";
export const API_PATHS = ["predict", "report", "model", "health", "ready", "metrics", "docs", "redoc", "openapi\\.json"];

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: {
      // One exact-path rule: /predict, /predict/batch, /model, ... but not /models.js etc.
      [`^/(${API_PATHS.join("|")})(/.*)?(\\?.*)?$`]: {
        target: apiTarget,
        changeOrigin: true,
      },
    },
  },
  build: {
    outDir: "dist",
    sourcemap: false,
  },
});

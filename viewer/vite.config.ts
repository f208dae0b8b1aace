import { defineConfig } from "vite";

// base "./": every asset path is relative, so one build works at / (bluff serve) and under any
// hosted prefix such as s3://bucket/prefix/viewer/.
export default defineConfig({
  base: "./",
  // `npm run dev` next to a running `bluff serve RESULTS` (port 8000): same URLs as under bluff serve
  server: {
    proxy: { "/results": "http://127.0.0.1:8000", "/config.json": "http://127.0.0.1:8000" },
  },
  build: {
    outDir: "../bluff_ray/_viewer",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
  },
});

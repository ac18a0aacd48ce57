// The minified single-file ESM bundle for pages without a bundler (edge/static uses it).
import { build } from "esbuild";

await build({
  entryPoints: ["src/index.ts"],
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  legalComments: "none",
  outfile: "dist/switchboard.min.js",
});

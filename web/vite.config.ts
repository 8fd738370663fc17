import { svelte } from '@sveltejs/vite-plugin-svelte';
import { createReadStream, statSync } from 'node:fs';
import { extname, resolve, sep } from 'node:path';
import { defaultClientConditions, defineConfig, type Connect, type Plugin } from 'vite';

// Cross-origin isolation: without it the page has no SharedArrayBuffer, so no WASM threads and
// no shared stop flag. `serve` (app/serve.py) sends the same headers.
const isolation = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

// `npm run dev` / `npm run preview` serve a bundle folder at /bundle/ as `diffusion-explainer serve`
// does: BUNDLE_DIR, default ../bundles/default.
function bundleFolder(): Plugin {
  const root = resolve(process.env.BUNDLE_DIR ?? resolve(import.meta.dirname, '..', 'bundles', 'default'));
  const types: Record<string, string> = { '.json': 'application/json', '.txt': 'text/plain; charset=utf-8' };
  const middleware: Connect.NextHandleFunction = (req, res, next) => {
    const path = decodeURIComponent((req.url ?? '').split('?')[0]);
    if (!path.startsWith('/bundle/')) return next();
    const file = resolve(root, '.' + path.slice('/bundle'.length));
    let size = -1;
    try {
      size = file.startsWith(root + sep) ? statSync(file).size : -1;
    } catch {
      /* missing: 404 below */
    }
    if (size < 0) {
      res.statusCode = 404;
      return res.end(`not in ${root}`);
    }
    res.setHeader('Content-Type', types[extname(file)] ?? 'application/octet-stream');
    res.setHeader('Content-Length', String(size));
    for (const [k, v] of Object.entries(isolation)) res.setHeader(k, v);
    createReadStream(file).pipe(res);
  };
  return {
    name: 'diffusion-explainer-bundle-folder',
    configureServer: (server) => void server.middlewares.use(middleware),
    configurePreviewServer: (server) => void server.middlewares.use(middleware),
  };
}

export default defineConfig({
  plugins: [svelte(), bundleFolder()],
  resolve: {
    // ORT's default entry inlines its wasm glue into our chunk; its thread workers then import
    // that chunk and die on `document`. The extern-wasm entry loads the glue from /ort/ instead.
    conditions: ['onnxruntime-web-use-extern-wasm', ...defaultClientConditions],
  },
  // Pyodide is imported at run time from /pyodide/; ORT must stay a plain ES module.
  optimizeDeps: { exclude: ['onnxruntime-web', 'pyodide'] },
  worker: { format: 'es' },
  build: { target: 'es2022', chunkSizeWarningLimit: 1000 },
  server: { headers: isolation },
  preview: { headers: isolation },
});

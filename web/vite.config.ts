import { svelte } from '@sveltejs/vite-plugin-svelte';
import { createReadStream, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { extname, join, resolve, sep } from 'node:path';
import { gzipSync } from 'node:zlib';
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

// Precompression: `X.gz` beside every big text/wasm/zip file of the build, so a server that
// negotiates encodings (`diffusion-explainer serve`, nginx's gzip_static, …) sends gzip without
// compressing per request, and the static site's service worker (public/coi-sw.js) can fetch
// `X.gz` from a host that negotiates nothing. Skipped where gzip saves under 5% (python_stdlib.zip,
// already deflated). precompressed.json lists them for the service worker.
const GZIP_EXTENSIONS = new Set(['.wasm', '.mjs', '.js', '.css', '.zip', '.json', '.onnx', '.data', '.txt', '.svg']);
function precompress(): Plugin {
  let outDir = '';
  return {
    name: 'diffusion-explainer-precompress',
    apply: 'build',
    configResolved: (config) => void (outDir = resolve(config.root, config.build.outDir)),
    closeBundle() {
      const written: string[] = [];
      const walk = (dir: string, rel: string) => {
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          const path = join(dir, e.name);
          const r = rel ? `${rel}/${e.name}` : e.name;
          if (e.isDirectory()) walk(path, r);
          else if (e.isFile() && GZIP_EXTENSIONS.has(extname(e.name)) && e.name !== 'precompressed.json' && e.name !== 'coi-sw.js') {
            const data = readFileSync(path);
            if (data.length < 1024) continue;
            const gz = gzipSync(data, { level: 6 });
            if (gz.length > data.length * 0.95) continue;
            writeFileSync(path + '.gz', gz);
            written.push(r);
          }
        }
      };
      walk(outDir, '');
      writeFileSync(join(outDir, 'precompressed.json'), JSON.stringify({ gzip: written.sort() }, null, 1) + '\n');
    },
  };
}

export default defineConfig({
  // Relative URLs: the same build works at / (`diffusion-explainer serve`) and from any folder of
  // a static host (`diffusion-explainer build-site`; a sub-folder needs worker.ts to resolve BASE_URL against its own URL).
  base: './',
  plugins: [svelte(), bundleFolder(), precompress()],
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

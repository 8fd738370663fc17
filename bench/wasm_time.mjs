// One model's per-call time in onnxruntime-web's WASM build (the very wasm the page runs, in Node's V8,
// the engine Chromium has), for app/int8_table.py's `wasm` table.
// usage: node bench/wasm_time.mjs MODEL.onnx THREADS CALLS '{"name": ["float32", [shape]], …}'
// → one JSON line: every call's ms after 8 warm-ups (random inputs of the given dtypes and shapes)
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [model, threads, calls, spec] = [process.argv[2], +process.argv[3], +process.argv[4], JSON.parse(process.argv[5])];
const require = createRequire(new URL('../web/package.json', import.meta.url));
const mod = await import(pathToFileURL(require.resolve('onnxruntime-web/wasm')).href);
const ort = mod.env ? mod : mod.default; // the CommonJS build (what require resolves) arrives as default
ort.env.wasm.numThreads = threads;
ort.env.logLevel = 'error';
const session = await ort.InferenceSession.create(new Uint8Array(readFileSync(model)), {
  executionProviders: ['wasm'],
  graphOptimizationLevel: 'all',
});
const feeds = {};
for (const [name, [dtype, shape]] of Object.entries(spec)) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data =
    dtype === 'float32'
      ? Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.9)
      : dtype === 'uint8'
        ? Uint8Array.from({ length: n }, (_, i) => (i * 37) % 256)
        : BigInt64Array.from({ length: n }, () => 0n);
  feeds[name] = new ort.Tensor(dtype, data, shape);
}
for (let i = 0; i < 8; i++) await session.run(feeds); // past V8's tier-up
const ms = [];
for (let i = 0; i < calls; i++) {
  const t = performance.now();
  await session.run(feeds);
  ms.push(+(performance.now() - t).toFixed(2));
}
console.log(JSON.stringify({ ms }));
process.exit(0);

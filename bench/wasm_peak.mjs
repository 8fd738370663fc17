// The matmul ceiling of onnxruntime-web's WASM build (the very wasm the page runs, in Node's V8, the
// engine Chromium has): the best rate of an n×n fp32 MatMul, as bench/flops.py measures native ORT's.
// usage: node bench/wasm_peak.mjs MODEL.onnx N THREADS SECONDS  → prints FLOP/s
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [model, n, threads, seconds] = [process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5]];
const require = createRequire(new URL('../web/package.json', import.meta.url));
const mod = await import(pathToFileURL(require.resolve('onnxruntime-web/wasm')).href);
const ort = mod.env ? mod : mod.default; // the CommonJS build (what require resolves) arrives as default
ort.env.wasm.numThreads = threads;
ort.env.logLevel = 'error';
const session = await ort.InferenceSession.create(new Uint8Array(readFileSync(model)), { executionProviders: ['wasm'] });
const data = Float32Array.from({ length: n * n }, (_, i) => Math.sin(i));
const feeds = { a: new ort.Tensor('float32', data, [n, n]), b: new ort.Tensor('float32', data, [n, n]) };
await session.run(feeds); // warm-up
let best = Infinity;
const end = performance.now() + seconds * 1000;
for (let runs = 0; runs < 3 || performance.now() < end; runs++) {
  const t = performance.now();
  await session.run(feeds);
  best = Math.min(best, performance.now() - t);
}
console.log(String((2 * n ** 3) / (best / 1000)));
process.exit(0);

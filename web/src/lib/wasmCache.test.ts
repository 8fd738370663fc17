import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compileFromCache, isEngineWasm, SHELL_CACHE, shellKey } from './wasmCache';

const BASE = 'https://example.org/app/';

/** A Cache API stand-in: a map of keys to bodies. */
function storage() {
  const kept = new Map<string, Response>();
  const cache = {
    match: async (k: string) => kept.get(k)?.clone(),
    put: async (k: string, r: Response) => void kept.set(k, new Response(await r.arrayBuffer(), { headers: { 'x-kept': '1' } })),
  };
  const opened: string[] = [];
  return { kept, opened, api: { open: async (name: string) => (opened.push(name), cache) } as unknown as CacheStorage };
}

describe('the engine WebAssembly kept for compiling', () => {
  it('is the offline worker’s cache and key', () => {
    const sw = readFileSync(new URL('../../public/coi-sw.js', import.meta.url), 'utf8');
    expect(sw).toContain(`const SHELL_CACHE = '${SHELL_CACHE}';`);
    expect(sw).toContain('url.origin + url.pathname');
    expect(shellKey(new URL(`${BASE}ort/x.wasm?v=1`))).toBe(`${BASE}ort/x.wasm`);
  });

  it('covers only ort/ and pyodide/ WebAssembly under the page', () => {
    expect(isEngineWasm(new URL(`${BASE}ort/ort-wasm-simd-threaded.wasm`), BASE)).toBe(true);
    expect(isEngineWasm(new URL(`${BASE}pyodide/pyodide.asm.wasm`), BASE)).toBe(true);
    expect(isEngineWasm(new URL(`${BASE}ort/ort-wasm-simd-threaded.mjs`), BASE)).toBe(false);
    expect(isEngineWasm(new URL(`${BASE}bundles/default/unet.onnx`), BASE)).toBe(false);
    expect(isEngineWasm(new URL('https://other.org/app/ort/x.wasm'), BASE)).toBe(false);
    expect(isEngineWasm(new URL(`${BASE}ort/sub/x.wasm`), BASE)).toBe(false);
  });

  it('answers a first fetch from the cache after putting it there, later ones plainly', async () => {
    const s = storage();
    const calls: string[] = [];
    const plain = (async (input: RequestInfo | URL) => (
      calls.push(String(input)),
      new Response('wasm bytes', { status: 200 })
    )) as typeof fetch;
    const f = compileFromCache(plain, BASE, SHELL_CACHE, s.api);
    const first = await f(`${BASE}ort/a.wasm`);
    expect(first.headers.get('x-kept')).toBe('1');
    expect(await first.text()).toBe('wasm bytes');
    expect(s.opened).toEqual([SHELL_CACHE]);
    const again = await f(`${BASE}ort/a.wasm`);
    expect(again.headers.get('x-kept')).toBeNull(); // kept already: the offline worker decides
    expect(calls).toEqual([`${BASE}ort/a.wasm`, `${BASE}ort/a.wasm`]);
    // other files are not touched
    await f(`${BASE}runtime.zip`);
    expect([...s.kept.keys()]).toEqual([`${BASE}ort/a.wasm`]);
  });

  it('passes on a failed answer and any cache failure', async () => {
    const s = storage();
    const missing = (async () => new Response('', { status: 404 })) as unknown as typeof fetch;
    expect((await compileFromCache(missing, BASE, SHELL_CACHE, s.api)(`${BASE}ort/a.wasm`)).status).toBe(404);
    expect(s.kept.size).toBe(0);
    const broken = { open: async () => Promise.reject(new Error('no storage')) } as unknown as CacheStorage;
    const ok = (async () => new Response('x', { status: 200 })) as unknown as typeof fetch;
    expect(await (await compileFromCache(ok, BASE, SHELL_CACHE, broken)(`${BASE}ort/a.wasm`)).text()).toBe('x');
    // the cache refuses the file: fetched again (from the HTTP cache), not lost
    let n = 0;
    const counted = (async () => new Response(`answer ${++n}`, { status: 200 })) as unknown as typeof fetch;
    const full = {
      open: async () => ({ match: async () => undefined, put: async () => Promise.reject(new Error('quota')) }),
    } as unknown as CacheStorage;
    expect(await (await compileFromCache(counted, BASE, SHELL_CACHE, full)(`${BASE}ort/a.wasm`)).text()).toBe('answer 2');
  });
});

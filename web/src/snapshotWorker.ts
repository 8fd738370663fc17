// A throwaway worker that makes Python's memory snapshot for the next visit (lib/pythonSnapshot.ts
// says why it is not the engine's own interpreter), saves it in the Cache API and ends.
import { fetchRuntimeZip, installRuntime, openSnapshotCache, snapshotKey } from './lib/pythonSnapshot';

declare const self: DedicatedWorkerGlobalScope;
// this script sits in assets/ beside the engine worker's: the page's folder is one up
const BASE = new URL(import.meta.env.BASE_URL, new URL('..', self.location.href)).href;

async function make(): Promise<string> {
  const cache = await openSnapshotCache();
  if (!cache) return 'no Cache API';
  const zip = await fetchRuntimeZip(BASE);
  const { loadPyodide, version } = (await import(/* @vite-ignore */ `${BASE}pyodide/pyodide.mjs`)) as typeof import('pyodide');
  const key = await snapshotKey(BASE, version, zip);
  if (await cache.match(key)) return 'already saved';
  const py = await loadPyodide({ indexURL: `${BASE}pyodide/`, _makeSnapshot: true });
  installRuntime(py, zip);
  const image = py.makeMemorySnapshot();
  for (const old of await cache.keys()) if (old.url !== key) await cache.delete(old);
  await cache.put(key, new Response(image as Uint8Array<ArrayBuffer>, { headers: { 'Content-Type': 'application/octet-stream' } }));
  return 'saved';
}

make().then(
  (text) => self.postMessage({ ok: true, text }),
  (e) => self.postMessage({ ok: false, text: (e as Error).message ?? String(e) }),
);

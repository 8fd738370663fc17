// Python's memory snapshot (the interpreter with runtime/ imported), kept in the Cache API: a warm
// visit restores it instead of starting Python. The page's build ships one beside Pyodide
// (app/snapshot.py, named by the same key), so a first visit restores too. Where none was shipped,
// it is made in a throwaway worker (snapshotWorker.ts) once the page is idle, because Pyodide's
// snapshot-making mode routes every `js` access through a recording proxy, which made the engine's
// own runs ~10–25% slower for the whole first visit.
import type { PyodideAPI } from 'pyodide';

export const SNAPSHOT_CACHE = 'diffusion-explainer-python';
/** The snapshot worker's name when app/snapshot.py runs it at build time: it hands the bytes back instead of caching them. */
export const BUILD_WORKER_NAME = 'python-snapshot-build';

async function hex(buf: ArrayBuffer): Promise<string> {
  return [...new Uint8Array(await crypto.subtle.digest('SHA-256', buf))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** The cache key, also the shipped file's URL: valid only for this Pyodide build and these runtime modules. */
export async function snapshotKey(base: string, version: string, runtimeZip: ArrayBuffer): Promise<string> {
  return `${base}pyodide/memory-snapshot-${version}-${(await hex(runtimeZip)).slice(0, 16)}.data`;
}

export async function openSnapshotCache(): Promise<Cache | null> {
  return typeof caches === 'undefined' ? null : await caches.open(SNAPSHOT_CACHE).catch(() => null);
}

/** The snapshot shipped with the page, or null where the build made none for this key (404) or it
 * cannot be fetched; a host that answers a missing file with its index page counts as none. */
export async function fetchShippedSnapshot(key: string): Promise<Response | null> {
  const res = await fetch(key).catch(() => null);
  return res?.ok && !res.headers.get('Content-Type')?.startsWith('text/html') ? res : null;
}

/** Keep this snapshot for the next visit, decoded, and drop older builds' (31.5 MB each). */
export async function saveSnapshot(cache: Cache, key: string, image: Uint8Array): Promise<void> {
  for (const old of await cache.keys()) if (old.url !== key) await cache.delete(old);
  await cache.put(key, new Response(image as Uint8Array<ArrayBuffer>, { headers: { 'Content-Type': 'application/octet-stream' } }));
}

export async function fetchRuntimeZip(base: string): Promise<ArrayBuffer> {
  const res = await fetch(`${base}runtime/runtime.zip`, { cache: 'no-cache' });
  if (!res.ok) throw new Error(`the page's runtime.zip is missing (HTTP ${res.status}); rebuild the page (npm run build)`);
  return res.arrayBuffer();
}

/** runtime.zip's files into Python's file system (a snapshot holds imported modules, not files) and runtime.web imported. */
export function installRuntime(py: PyodideAPI, zip: ArrayBuffer): void {
  py.unpackArchive(zip, 'zip', { extractDir: '/home/pyodide/app' });
  py.runPython("import sys\nif '/home/pyodide/app' not in sys.path: sys.path.insert(0, '/home/pyodide/app')\nimport runtime.web");
}

/** A restored interpreter carries the snapshot's `random` state (the same for every visitor of a shipped one): seed it afresh. */
export function reseedRandom(py: PyodideAPI): void {
  py.runPython("import sys\nif 'random' in sys.modules: sys.modules['random'].seed()");
}

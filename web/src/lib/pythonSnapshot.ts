// Python's memory snapshot (the interpreter with runtime/ imported), kept in the Cache API: a warm
// visit restores it instead of starting Python. It is made in a throwaway worker (snapshotWorker.ts)
// once the page is idle, because Pyodide's snapshot-making mode routes every `js` access through a
// recording proxy, which made the engine's own runs ~10–25% slower for the whole first visit.
import type { PyodideAPI } from 'pyodide';

export const SNAPSHOT_CACHE = 'diffusion-explainer-python';

async function hex(buf: ArrayBuffer): Promise<string> {
  return [...new Uint8Array(await crypto.subtle.digest('SHA-256', buf))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** The cache key: valid only for this Pyodide build and these runtime modules. */
export async function snapshotKey(base: string, version: string, runtimeZip: ArrayBuffer): Promise<string> {
  return `${base}pyodide/memory-snapshot-${version}-${(await hex(runtimeZip)).slice(0, 16)}`;
}

export async function openSnapshotCache(): Promise<Cache | null> {
  return typeof caches === 'undefined' ? null : await caches.open(SNAPSHOT_CACHE).catch(() => null);
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

// A throwaway worker that makes Python's memory snapshot for the next visit (lib/pythonSnapshot.ts
// says why it is not the engine's own interpreter), saves it in the Cache API and ends. Started by
// the name BUILD_WORKER_NAME (app/snapshot.py, at build time) it hands the bytes back instead, to
// ship with the page: the same code path, so the shipped snapshot is what a browser would make.
import { BUILD_WORKER_NAME, fetchRuntimeZip, installRuntime, openSnapshotCache, saveSnapshot, snapshotKey } from './lib/pythonSnapshot';

declare const self: DedicatedWorkerGlobalScope;
// this script sits in assets/ beside the engine worker's: the page's folder is one up
const BASE = new URL(import.meta.env.BASE_URL, new URL('..', self.location.href)).href;
const FOR_BUILD = self.name === BUILD_WORKER_NAME;

async function make(): Promise<{ text: string; key?: string; image?: Uint8Array }> {
  const cache = FOR_BUILD ? null : await openSnapshotCache();
  if (!cache && !FOR_BUILD) return { text: 'no Cache API' };
  const zip = await fetchRuntimeZip(BASE);
  const { loadPyodide, version } = (await import(/* @vite-ignore */ `${BASE}pyodide/pyodide.mjs`)) as typeof import('pyodide');
  const key = await snapshotKey(BASE, version, zip);
  if (await cache?.match(key)) return { text: 'already saved' };
  const py = await loadPyodide({ indexURL: `${BASE}pyodide/`, _makeSnapshot: true });
  installRuntime(py, zip);
  const image = py.makeMemorySnapshot();
  if (!cache) return { text: 'made', key, image };
  await saveSnapshot(cache, key, image);
  return { text: 'saved' };
}

make().then(
  (made) => self.postMessage({ ok: true, ...made }, made.image ? [made.image.buffer] : []),
  (e) => self.postMessage({ ok: false, text: (e as Error).message ?? String(e) }),
);

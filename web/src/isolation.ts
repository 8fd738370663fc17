// Cross-origin isolation on a static host that sends no COOP/COEP (see public/coi-sw.js).
//
// `diffusion-explainer serve` and `npm run dev` send the headers: the page is isolated and this
// does nothing. Elsewhere the first visit registers the service worker, waits until it is active
// and reloads once, before the app starts (so nothing big is downloaded twice); the reload goes
// through the worker, which adds the headers. A sessionStorage flag allows one reload per attempt:
// if the page is still not isolated after it (service workers disabled, a private window that
// refuses them, a hard reload that bypasses the worker twice), the app starts anyway, without
// threads, and says so in its provider line. An isolated load clears the flag.
//
// Offline: the same service worker keeps the app's files for the next visit without a network, so
// it is registered on every host, also where the page is isolated already (then without a reload and
// without waiting for it: the first visit stays uncontrolled, so its downloads do not pass through the
// worker), and once the first run is done it is told which files the page and the engine worker
// loaded (keepForOffline).

import { SHELL_CACHE } from './lib/wasmCache';

const FLAG = 'diffusion-explainer-coi-reload';

/** true when the page is about to reload (the caller must not start the app). */
export async function ensureIsolation(): Promise<boolean> {
  if (globalThis.crossOriginIsolated) {
    sessionStorage.removeItem(FLAG);
    registerForOffline();
    return false;
  }
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return false;
  if (sessionStorage.getItem(FLAG)) {
    sessionStorage.removeItem(FLAG);
    console.warn('not cross-origin isolated even through the service worker: running without WASM threads');
    return false;
  }
  try {
    await navigator.serviceWorker.register(new URL('coi-sw.js', document.baseURI));
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('not active after 10 s')), 10_000));
    await Promise.race([navigator.serviceWorker.ready, timeout]);
  } catch (e) {
    console.warn(`the isolation service worker could not be registered (${(e as Error).message}): running without WASM threads`);
    return false;
  }
  sessionStorage.setItem(FLAG, '1');
  location.reload();
  return true;
}

const within = <T>(p: Promise<T>, ms: number) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`not within ${ms / 1000} s`)), ms))]);

/** Whether this page has an offline worker: not without service workers, and not under ?bench, which
 * counts bytes on the wire by Resource Timing (0 for responses a service worker relays). */
const offline = () => 'serviceWorker' in navigator && window.isSecureContext && !new URLSearchParams(location.search).has('bench');

/** The offline worker's cache when this visit has that worker but is not answered by it (a first
 * visit): the engine then keeps its WebAssembly there itself and compiles it from there (lib/wasmCache.ts). */
export function engineWasmCache(): string | null {
  return offline() && !navigator.serviceWorker.controller ? SHELL_CACHE : null;
}

/** Register the service worker (for the next visit); nothing waits for it. */
function registerForOffline() {
  if (!offline()) return;
  if (!navigator.serviceWorker.controller)
    navigator.serviceWorker.register(new URL('coi-sw.js', document.baseURI)).catch((e: Error) => {
      console.warn(`the offline service worker could not be registered (${e.message}): the next visit needs the network`);
    });
}

/** Tell the service worker which files this visit loaded (the page's and `more`, the engine worker's),
 * so the next visit has them without a network. Called once the first run is done. */
export async function keepForOffline(more: string[]) {
  if (!offline()) return;
  try {
    const registration = await within(navigator.serviceWorker.ready, 10_000);
    navigator.serviceWorker.addEventListener('message', (e: MessageEvent<{ type?: string }>) => {
      if (e.data?.type === 'kept') document.documentElement.dataset.offline = 'kept'; // the next visit needs no network
    });
    const urls = [location.href, ...performance.getEntriesByType('resource').map((e) => e.name), ...more];
    registration.active?.postMessage({ type: 'keep', urls });
  } catch (e) {
    console.warn(`the offline service worker is not active (${(e as Error).message}): the next visit needs the network`);
  }
}

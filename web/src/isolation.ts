// Cross-origin isolation on a static host that sends no COOP/COEP (see public/coi-sw.js).
//
// `diffusion-explainer serve` and `npm run dev` send the headers: the page is isolated and this
// does nothing. Elsewhere the first visit registers the service worker, waits until it is active
// and reloads once, before the app starts (so nothing big is downloaded twice); the reload goes
// through the worker, which adds the headers. A sessionStorage flag allows one reload per attempt:
// if the page is still not isolated after it (service workers disabled, a private window that
// refuses them, a hard reload that bypasses the worker twice), the app starts anyway, without
// threads, and says so in its provider line. An isolated load clears the flag.

const FLAG = 'diffusion-explainer-coi-reload';

/** true when the page is about to reload (the caller must not start the app). */
export async function ensureIsolation(): Promise<boolean> {
  if (globalThis.crossOriginIsolated) {
    sessionStorage.removeItem(FLAG);
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

// The bundle's UMAP reference cloud (umap_bases.json, typed once as protocol.ts's UmapBases) and
// its thumbnail sprite, fetched once per bundle URL. Absent in a bundle exported without a UMAP.
import { bundleFile } from '../lib/bundleLoader';
import type { UmapBases } from '../lib/protocol';

export interface LoadedBases {
  bases: UmapBases;
  /** The reference runs' final images (null until loaded, or without thumbnails). */
  sprite: Promise<HTMLImageElement | null>;
}

const cache = new Map<string, Promise<LoadedBases | null>>();

/** The bases of the bundle at `bundleUrl` (a folder URL), or null when it has none. */
export function loadUmapBases(bundleUrl: string): Promise<LoadedBases | null> {
  let p = cache.get(bundleUrl);
  if (!p) {
    p = fetchBases(new URL(bundleUrl, location.href));
    cache.set(bundleUrl, p);
  }
  return p;
}

async function fetchBases(base: URL): Promise<LoadedBases | null> {
  try {
    // the cached copy first: a folder bundle has no server, and offline none answers
    const r = await bundleFile(base.href, 'umap_bases.json');
    const bases = r.ok ? ((await r.json()) as UmapBases | null) : null;
    if (!bases?.points) return null;
    const file = bases.thumbnails?.file;
    const sprite = file
      ? bundleFile(base.href, file)
          .then(async (s) => (s.ok ? image(URL.createObjectURL(await s.blob())) : null))
          .catch(() => null)
      : Promise.resolve(null);
    return { bases, sprite };
  } catch {
    return null;
  }
}

function image(src: string): Promise<HTMLImageElement | null> {
  return new Promise((resolve) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => resolve(null);
    im.src = src;
  });
}

// The bundle's UMAP reference cloud (umap_bases.json, typed once as protocol.ts's UmapBases) and
// its thumbnail sprite, fetched once per bundle URL. Absent in a bundle exported without a UMAP.
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
    const r = await fetch(new URL('umap_bases.json', base));
    const bases = r.ok ? ((await r.json()) as UmapBases | null) : null;
    if (!bases?.points) return null;
    return { bases, sprite: bases.thumbnails?.file ? image(new URL(bases.thumbnails.file, base).href) : Promise.resolve(null) };
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

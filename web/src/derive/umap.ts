// The UMAP plot's geometry: where the reference cloud and a run's steps land on the canvas, which
// point is under the pointer, and which sprite tile holds a reference run's final image.
import type { StepMsg, Trace, UmapBases } from '../lib/protocol';

export interface Frame {
  px: (x: number) => number;
  py: (y: number) => number;
}

/** The cloud's extent fitted into width × height with `pad` around it, both axes to one scale (so
 * distances read alike in every direction); y grows upwards. */
export function fitFrame(extent: UmapBases['extent'], width: number, height: number, pad: number): Frame {
  const [x0, x1] = extent.x;
  const [y0, y1] = extent.y;
  const s = Math.min((width - 2 * pad) / (x1 - x0 || 1), (height - 2 * pad) / (y1 - y0 || 1));
  const ox = (width - s * (x1 - x0)) / 2;
  const oy = (height - s * (y1 - y0)) / 2;
  return { px: (x) => ox + (x - x0) * s, py: (y) => height - oy - (y - y0) * s };
}

/** A run's steps that carry a UMAP position (the runtime's step.umap), in order. */
export function placedSteps(t: Trace | null | undefined): { step: StepMsg; xy: [number, number] }[] {
  return (t?.steps ?? []).filter((s) => s.umap).map((s) => ({ step: s, xy: s.umap as [number, number] }));
}

/** The candidate nearest to (x, y) within `radius` px; on a tie the later-listed preferred one wins. */
export function nearest<T extends { x: number; y: number }>(
  candidates: Iterable<T>,
  x: number,
  y: number,
  radius: number,
  preferred: (c: T) => boolean = () => false,
): T | null {
  let best: T | null = null;
  let bestD = radius * radius;
  for (const c of candidates) {
    const d = (c.x - x) ** 2 + (c.y - y) ** 2;
    if (d < bestD || (d === bestD && preferred(c))) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

/** The sprite tile (sx, sy, size) of reference point i's run: prompt-major, then seed. */
export function spriteTile(bases: UmapBases, i: number): { sx: number; sy: number; size: number } | null {
  const t = bases.thumbnails;
  if (!t) return null;
  const run = bases.points.prompt[i] * bases.seeds.length + bases.seeds.indexOf(bases.points.seed[i]);
  return { sx: (run % t.cols) * t.tile, sy: Math.floor(run / t.cols) * t.tile, size: t.tile };
}

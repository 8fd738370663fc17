// The runs the UMAP draws over its reference cloud besides the reader's run and the compare run:
// side runs of the same request that vary one thing (another seed, scale or scheduler), each with
// its own colour from the palette's track colours.
import type { Trace } from '../lib/protocol';

export interface SideTrack {
  key: string;
  /** "seed 5", "scale 7.5", "scheduler ddim" */
  label: string;
  run: Trace;
  colour: string;
}

const VARIED = ['seed', 'guidance', 'scheduler'] as const;
const NAME: Record<(typeof VARIED)[number], string> = { seed: 'seed', guidance: 'scale', scheduler: 'scheduler' };

/** Side runs of `current`'s request that differ from it in exactly one of seed, scale or scheduler
 * and have at least one placed step, in key order, coloured in turn from `colours`; at most `max`. */
export function sideTracks(
  sideRuns: Record<string, Trace>,
  current: Trace | null | undefined,
  colours: readonly string[],
  exclude: (Trace | null | undefined)[] = [],
  max = colours.length,
): SideTrack[] {
  if (!current || !colours.length) return [];
  const r = current.request;
  const out: SideTrack[] = [];
  for (const key of Object.keys(sideRuns).sort()) {
    const run = sideRuns[key];
    if (run === current || exclude.includes(run) || !run.steps.some((s) => s.umap)) continue;
    const q = run.request;
    if (q.prompt !== r.prompt || q.negativePrompt !== r.negativePrompt || q.steps !== r.steps) continue;
    const diff = VARIED.filter((k) => q[k] !== r[k]);
    if (diff.length !== 1) continue;
    out.push({ key, label: `${NAME[diff[0]]} ${q[diff[0]]}`, run, colour: colours[out.length % colours.length] });
    if (out.length >= max) break;
  }
  return out;
}

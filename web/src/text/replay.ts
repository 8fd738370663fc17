// The sentences a replayed trace file shows (controls/TraceControls.svelte): where the run was made,
// and what it cannot do here. Plain strings: the page renders them as text, never HTML.
import type { TraceMeta } from '../lib/tracefile';

/** The one line that marks every view as a replay, e.g. "Replay of a native run on Linux x86_64 · AMD EPYC · 2 CPUs";
 * a model with random weights says so here too (its images are noise, and a reader must not think it broke). */
export function replayLine(meta: Pick<TraceMeta, 'source' | 'machine' | 'synthetic'> & { bundle?: { randomWeights: boolean } }): string {
  if (meta.synthetic) return 'Synthetic trace: random numbers made by a test, not a model’s output';
  const line = `Replay of a ${meta.source === 'page' ? 'page' : 'native'} run on ${meta.machine}`;
  return meta.bundle?.randomWeights ? `${line} · the model’s weights are random: its images are noise by design` : line;
}

/** What else a reader should know about this replay. */
export function replayNotes(meta: Pick<TraceMeta, 'synthetic' | 'bundle'>): string[] {
  const notes: string[] = [];
  if (meta.synthetic)
    notes.push(
      'No model ran: every tensor and image in this file is random, shaped like a real run so the views can be tried at this size.',
    );
  else if (meta.bundle.randomWeights)
    notes.push(
      `The model’s weights are random (${meta.bundle.name}: its architecture at full size, not a trained model), so its images are noise by design.`,
    );
  notes.push('No model is loaded: views that would run it (Generate, other scales or seeds, CLIP scores) say so instead.');
  return notes;
}

/** Why nothing can run while a trace is replayed (engine.cannotRun's words). */
export const REPLAY_CANNOT_RUN = 'This is a replay of a recorded run: no model is loaded. Leave the replay to run the model.';

/** The UMAP view in a replay: its reference cloud lives in the model's bundle, which a replay does not load. */
export const REPLAY_NO_MAP =
  'The map needs the model’s bundle (its UMAP reference cloud), and a replay loads no bundle: leave the replay to see this run on it.';

/** The compare view in a replay: the file holds one run, and a second needs the model. */
export const REPLAY_NO_COMPARE = 'A replay holds one run: comparing needs a second prompt run by the model, and no model is loaded here.';

/** The CLIP view in a replay: the scores the file carries stay, nothing new can be scored. */
export const REPLAY_NO_CLIP = 'CLIP cannot score anything new in a replay: no model is loaded, so only the scores saved in the file show.';

/** The Runtime panel in a replay: no provider runs, the timings are the recorded run's. */
export function replayRuntime(meta: Pick<TraceMeta, 'source' | 'machine' | 'synthetic'>): { title: string; reason: string } {
  return {
    title: 'Replay',
    reason: `${replayLine(meta)}. No engine runs in this page: no provider, no threads, nothing was started.`,
  };
}

/** How a replay's facts read in one line: file, size, model and sizes, steps. */
export function replayFacts(r: {
  name: string;
  bytes: number;
  meta: Pick<TraceMeta, 'bundle' | 'created'>;
  steps: number;
  mb: (b: number) => string;
}): string {
  const b = r.meta.bundle;
  const m = b.model as { latent_channels?: number } | undefined;
  const latent = b.latentSize ? `latent ${m?.latent_channels ?? 4}×${b.latentSize[0]}×${b.latentSize[1]}` : '';
  const image = b.imageSize ? `${b.imageSize[0]}×${b.imageSize[1]} px` : '';
  const made = r.meta.created ? `recorded ${r.meta.created.replace('T', ' ').replace('Z', ' UTC')}` : '';
  return [r.name, r.mb(r.bytes), b.name, image, latent, `${r.steps} steps`, made].filter(Boolean).join(' · ');
}

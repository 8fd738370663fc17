// Where the views open (issue 27, pedagogy): at the last step ε_u, ε_c and ε̂ look alike, so a
// finished run opens at the step where the prompt changes the noise prediction most — the largest
// ‖ε_c − ε_u‖ / ‖ε_u‖ in the first half of the run — unless the reader picked a step.
import type { StepMsg } from '../lib/protocol';
import { norm, normOfDifference } from './stats';
import { values } from './tensor';

/** ‖ε_c − ε_u‖ / ‖ε_u‖ of one step (0 when ε_u is all zeros). */
export function promptEffect(step: Pick<StepMsg, 'noiseCond' | 'noiseUncond'>): number {
  const u = values(step.noiseUncond);
  const n = norm(u);
  return n > 0 ? normOfDifference(values(step.noiseCond), u) / n : 0;
}

/** The index of the step the views open at: the largest promptEffect among the first half of the
 * planned steps (the first ⌈planned/2⌉, of those that arrived) that the run previewed (every
 * `every`-th: its x̂₀ is decoded already); null without steps. Ties: the earlier. */
export function teachingStep(
  steps: Pick<StepMsg, 'noiseCond' | 'noiseUncond'>[],
  planned: number = steps.length,
  every: number = 1,
): number | null {
  const n = Math.min(steps.length, Math.max(1, Math.ceil(planned / 2)));
  const stride = every > 0 ? every : 1;
  let best: number | null = null;
  let bestV = -Infinity;
  for (let i = 0; i < n; i += stride) {
    const v = promptEffect(steps[i]);
    if (v > bestV) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

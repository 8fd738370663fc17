// The selected step and the lines every view writes about it.
import type { StepMsg, Trace } from '../lib/protocol';

/** The trace's step at `index`, or null (no trace, no pick, not arrived yet). */
export function stepAt(trace: Trace | null | undefined, index: number | null): StepMsg | null {
  return trace && index !== null ? (trace.steps[index] ?? null) : null;
}

/** "step 3 of 25, t = 981": which step, among the planned ones, at which timestep. */
export function stepLine(step: StepMsg | null | undefined, trace: Trace | null | undefined): string {
  return step && trace ? `step ${step.index + 1} of ${trace.timesteps.length}, t = ${Math.round(step.timestep)}` : '';
}

/** The newest decoded image of a run: the final image, else the latest step's prediction. */
export function newestImage(trace: Trace | null | undefined) {
  if (!trace) return null;
  return trace.image ?? [...trace.steps].reverse().find((s) => s.image)?.image ?? null;
}

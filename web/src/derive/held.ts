import type { Trace } from '../lib/protocol';

/** The run an off-screen view shows: while it is closed and the worker is still on the current run
 * (`inFlight`: that run's id while its steps, then its previews and CLIP scores, are coming) it keeps
 * what it last showed (its drawing at every update competed with the model for the CPU, issue 24);
 * it takes the current run once the row is open, the worker is done with the run, or it has shown
 * nothing yet. */
export function heldTrace(kept: Trace | null, current: Trace | null, open: boolean, inFlight: number | null): Trace | null {
  return open || !current || !kept || inFlight !== current.runId ? current : kept;
}

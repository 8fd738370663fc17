import type { Trace } from '../lib/protocol';

/** The run an off-screen view shows: while it is closed and the worker is still on the current run
 * (`inFlight`: that run's id while its steps, then its previews and CLIP scores, are coming) it keeps
 * what it last showed, nothing before the first run (its drawing at every update competed with the
 * model for the CPU, issue 24; on a first visit, drawing every view for the first run's first step
 * held the main thread ~0.8 s); it takes the current run once the row is open or the worker is done
 * with the run. */
export function heldTrace(kept: Trace | null, current: Trace | null, open: boolean, inFlight: number | null): Trace | null {
  return open || !current || inFlight !== current.runId ? current : kept;
}

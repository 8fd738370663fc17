import type { Trace } from '../lib/protocol';

/** The run an off-screen view shows: while it is closed and a run streams it keeps what it last
 * showed (its drawing at every step competed with the model for the CPU, issue 24); it takes the
 * current run once the row is open, the run is done, or it has shown nothing yet. */
export function heldTrace(kept: Trace | null, current: Trace | null, open: boolean): Trace | null {
  return open || !current || current.done || !kept ? current : kept;
}

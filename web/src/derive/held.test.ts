import { describe, expect, it } from 'vitest';
import type { Trace } from '../lib/protocol';
import { heldTrace } from './held';

const run = (runId: number, steps: number, done = false) => ({ runId, steps: new Array(steps).fill({}), done }) as unknown as Trace;

describe('heldTrace', () => {
  const old = run(1, 25, true);
  it('keeps the last run while closed and the worker is on a new one', () => {
    expect(heldTrace(old, run(2, 3), false, 2)).toBe(old);
  });
  it('keeps holding after run-done while previews and CLIP scores are still coming', () => {
    expect(heldTrace(old, run(2, 25, true), false, 2)).toBe(old);
  });
  it('takes the streaming run when open', () => {
    const now = run(2, 3);
    expect(heldTrace(old, now, true, 2)).toBe(now);
  });
  it('catches up once the worker is done with the run, even closed', () => {
    const done = run(2, 25, true);
    expect(heldTrace(old, done, false, null)).toBe(done);
  });
  it('does not hold a run the worker is not on (a replayed trace, a stopped run)', () => {
    const opened = run(7, 25, true);
    expect(heldTrace(old, opened, false, 2)).toBe(opened);
  });
  it('shows nothing while closed and the first run is in flight, and lets go when there is none', () => {
    const now = run(1, 1);
    expect(heldTrace(null, now, false, 1)).toBeNull();
    expect(heldTrace(null, now, true, 1)).toBe(now);
    expect(heldTrace(old, null, false, null)).toBeNull();
  });
});

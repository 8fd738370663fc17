import { describe, expect, it } from 'vitest';
import type { Trace } from '../lib/protocol';
import { heldTrace } from './held';

const run = (runId: number, steps: number, done = false) => ({ runId, steps: new Array(steps).fill({}), done }) as unknown as Trace;

describe('heldTrace', () => {
  const old = run(1, 25, true);
  it('keeps the last run while closed and a new one streams', () => {
    expect(heldTrace(old, run(2, 3), false)).toBe(old);
  });
  it('takes the streaming run when open', () => {
    const now = run(2, 3);
    expect(heldTrace(old, now, true)).toBe(now);
  });
  it('catches up once the run is done, even closed', () => {
    const done = run(2, 25, true);
    expect(heldTrace(old, done, false)).toBe(done);
  });
  it('shows the first run it sees and lets go when there is none', () => {
    const now = run(1, 1);
    expect(heldTrace(null, now, false)).toBe(now);
    expect(heldTrace(old, null, false)).toBeNull();
  });
});

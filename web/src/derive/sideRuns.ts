// Side runs: the extra runs a view asks for (other seeds, schedulers, scales), queued by the
// EngineClient under a key. One naming of keys and one reading of their state for every view.
import type { RequestMsg, Trace } from '../lib/protocol';

export type SideState = 'idle' | 'queued' | 'running' | 'done' | 'stopped';

/** A side run's key: its kind, the request's fields not being varied (in a fixed order), and the
 * varied value; the same request always gives the same key, so a run is never made twice. */
export function sideKey(kind: string, request: RequestMsg, varied: Partial<RequestMsg>): string {
  const rest: Record<string, unknown> = { ...request };
  for (const k of Object.keys(varied)) delete rest[k];
  return `${kind}:${JSON.stringify(varied)}:${JSON.stringify(rest)}`;
}

/** Where a side run stands: `run` the engine's Trace under its key (if started), `pending` whether
 * the engine still holds it, `asked` whether this view asked for it in this session. */
export function sideState(run: Trace | undefined, pending: boolean, asked: boolean): SideState {
  if (run) return run.done ? (run.cancelled ? 'stopped' : 'done') : 'running';
  if (asked) return pending ? 'queued' : 'stopped';
  return 'idle';
}

/** Can the reader (re)start it? */
export const canStart = (s: SideState) => s === 'idle' || s === 'stopped';

/** The state in words for a caption ("running… step 3 of 25"). */
export function sideStatus(s: SideState, run: Trace | undefined): string {
  if (s === 'running') return `running… step ${run?.steps.length ?? 0} of ${run?.timesteps.length ?? '?'}`;
  if (s === 'queued') return 'queued…';
  if (s === 'idle') return 'not run yet';
  return s;
}

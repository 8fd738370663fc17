// One queue for every job the engine does: the reader's run and the side runs views ask for (the
// guidance row, other seeds, another scheduler, the compare prompt). Pure: what each job is, where it
// stands, and the status words, so no two places on the page can disagree about the same run.
import type { RequestMsg, Trace } from '../lib/protocol';

export type JobState = 'queued' | 'running' | 'decoding' | 'done' | 'stopped';

export interface Job {
  /** 'main' for the reader's run, else the side run's key. */
  id: string;
  /** "Your run", "Guidance row: scale 1", "Seed 42", "Scheduler: Euler", "Compare: “a dog …”". */
  label: string;
  state: JobState;
  /** "step 3 of 25", "decoding 2 of 6 previews", "finishing", "" */
  progress: string;
  main: boolean;
}

/** The page's previewEvery for a run of `steps` steps: about `previews` evenly spaced x̂₀ decodes
 * (runtime/web.py PAGE_PREVIEWS); the reader's pick decodes any other step. 0 previews: every step. */
export function previewEveryFor(steps: number, previews: number): number {
  if (!(previews > 0) || !(steps > 0)) return 1;
  return Math.max(1, Math.ceil(steps / previews));
}

/** Whether step i of n is previewed (runtime/pipeline.py `previewed`): every `every`-th and the last. */
export function isPreviewed(i: number, n: number, every: number): boolean {
  return every > 0 && (i % every === 0 || i === n - 1);
}

/** The steps whose predicted image (x̂₀ decoded) the run will deliver: every previewEvery-th and the last. */
export function expectedImages(trace: Trace): number {
  const every = trace.request.previewEvery;
  if (!every || every < 1) return 0;
  const n = trace.steps.length;
  let k = 0;
  for (let i = 0; i < n; i++) if (i % every === 0 || i === n - 1) k++;
  return k;
}

/** Images that arrived so far (of those expected). */
export function imagesIn(trace: Trace): number {
  const every = trace.request.previewEvery;
  if (!every || every < 1) return 0;
  const n = trace.steps.length;
  return trace.steps.filter((s, i) => (i % every === 0 || i === n - 1) && s.image).length;
}

/** Every view has what it shows: the run is done and its previews are decoded (or it was stopped). */
export function settled(trace: Trace | null | undefined): boolean {
  if (!trace) return true;
  if (!trace.done) return false;
  if (trace.cancelled) return true;
  return imagesIn(trace) >= expectedImages(trace);
}

/** Where a run stands. `cut`: its preview decoding was stopped (counts as done). `working`: the
 * worker is still on the run after its previews (CLIP's scores to come), so views are still filling. */
export function runState(trace: Trace, cut = false, working = false): JobState {
  if (!trace.done) return 'running';
  if (trace.cancelled) return 'stopped';
  if (cut) return 'done';
  return settled(trace) && !working ? 'done' : 'decoding';
}

/** "step 3 of 25", "decoding 2 of 6 previews", "finishing" (previews in, CLIP still scoring), or "" when there is nothing to count. */
export function runProgress(trace: Trace, state: JobState): string {
  if (state === 'running') return `step ${trace.steps.length} of ${trace.timesteps.length}`;
  if (state === 'decoding')
    return imagesIn(trace) < expectedImages(trace) ? `decoding ${imagesIn(trace)} of ${expectedImages(trace)} previews` : 'finishing';
  if (state === 'stopped') return `stopped after ${trace.steps.length} of ${trace.timesteps.length}`;
  return '';
}

const short = (t: string, n = 28) => (t.length > n ? `${t.slice(0, n - 1)}…` : t);

/** A side run's key (derive/sideRuns.ts: `kind:{varied}:{rest}`, or the compare view's
 * `compare:{request}`) in words. */
export function sideLabel(key: string, request?: RequestMsg): string {
  const kind = key.slice(0, key.indexOf(':'));
  let varied: Record<string, unknown>;
  try {
    const rest = key.slice(kind.length + 1);
    // the varied fields are the first JSON object of the key
    let depth = 0,
      end = 0;
    for (let i = 0; i < rest.length; i++) {
      if (rest[i] === '{') depth++;
      else if (rest[i] === '}' && --depth === 0) {
        end = i + 1;
        break;
      }
    }
    varied = JSON.parse(rest.slice(0, end)) as Record<string, unknown>;
  } catch {
    varied = {};
  }
  if (kind === 'guidance') return `Guidance row: scale ${String(varied.guidance ?? request?.guidance ?? '?')}`;
  if (kind === 'seed') return `Seed ${String(varied.seed ?? request?.seed ?? '?')}`;
  if (kind === 'compare') return `Compare: “${short(String(varied.prompt ?? request?.prompt ?? ''))}”`;
  if (kind === 'scheduler' || 'scheduler' in varied) return `Scheduler: ${String(varied.scheduler ?? request?.scheduler ?? '?')}`;
  return short(key, 40);
}

export interface JobInput {
  main: Trace | null;
  /** the reader's run's preview decoding was cut by a Stop */
  mainCut: boolean;
  /** the worker is still on the reader's run after its previews (CLIP's scores to come) */
  mainWorking?: boolean;
  queue: { key: string; request: RequestMsg }[];
  sideRuns: Record<string, Trace>;
  sideRunning: string | null;
  /** side runs asked for in this session (their keys), newest last: finished ones stay listed */
  recent: string[];
}

/** The queue as the reader sees it: the reader's run first, then the side run on the engine, then
 * the waiting ones in order, then the finished side runs (newest first, a few). */
export function jobList(x: JobInput, keepDone = 4): Job[] {
  const jobs: Job[] = [];
  if (x.main) {
    const state = runState(x.main, x.mainCut, x.mainWorking);
    jobs.push({ id: 'main', label: 'Your run', state, progress: runProgress(x.main, state), main: true });
  }
  const seen = new Set<string>();
  if (x.sideRunning) {
    const t = x.sideRuns[x.sideRunning];
    const state: JobState = t ? (t.done ? (t.cancelled ? 'stopped' : 'done') : 'running') : 'running';
    jobs.push({
      id: x.sideRunning,
      label: sideLabel(x.sideRunning, t?.request),
      state,
      progress: t ? runProgress(t, state) : '',
      main: false,
    });
    seen.add(x.sideRunning);
  }
  for (const q of x.queue) {
    if (seen.has(q.key)) continue;
    seen.add(q.key);
    jobs.push({ id: q.key, label: sideLabel(q.key, q.request), state: 'queued', progress: '', main: false });
  }
  const finished = [...x.recent]
    .reverse()
    .filter((k) => !seen.has(k) && x.sideRuns[k]?.done)
    .slice(0, keepDone);
  for (const k of finished) {
    const t = x.sideRuns[k];
    const state: JobState = t.cancelled ? 'stopped' : 'done';
    jobs.push({ id: k, label: sideLabel(k, t.request), state, progress: runProgress(t, state), main: false });
  }
  return jobs;
}

/** What a new run did to the side runs it found, in a sentence (null: nothing to say). */
export function droppedText(d: { dropped: string[]; stopped: string | null } | null): string | null {
  if (!d || (!d.dropped.length && !d.stopped)) return null;
  const parts: string[] = [];
  if (d.stopped) parts.push(`stopped ${sideLabel(d.stopped)}`);
  if (d.dropped.length) parts.push(`dropped ${d.dropped.length} queued side run${d.dropped.length === 1 ? '' : 's'}`);
  return `Your new run went first: it ${parts.join(' and ')} of the previous run; their views ask again for the new one.`;
}

/** Where the model ran, short: the provider part of the backend's name ("onnxruntime-web 1.30.0
 * (WASM, 2 thread(s))" → "WASM, 2 thread(s)"), so the model's time says what it was measured on. */
export function ranOn(backend: string): string {
  return /\s\((.+)\)\s*$/.exec(backend)?.[1] ?? backend;
}

/** The two times the result states, labelled: the reader's wait (click → every view settled) and the
 * model's own time for the run. */
export function timesText(waitMs: number | null, modelMs: number | undefined): { wait: string; model: string } {
  const s = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
  return { wait: waitMs === null ? '–' : s(waitMs), model: modelMs === undefined ? '–' : s(modelMs) };
}

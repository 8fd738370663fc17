// The run in the address bar: ?prompt=…&negative=…&seed=…&scale=…&steps=…&scheduler=…&step=…
//
// Why: a link reproduces a run exactly (the runtime is deterministic: same request ⇒ same image
// bytes) and opens it at the step the reader was looking at. Values are taken as typed, never
// "fixed" here: the runtime's Request.validate is the one judge, and its words reach the page as
// engine.runError. Other parameters (provider, threads, bundle …) are left as they are.
import { untrack } from 'svelte';
import type { RequestMsg } from '../lib/protocol';
import type { EngineClient } from './engine.svelte';
import type { Selection } from './selection.svelte';

/** Request field → its readable URL name. */
export const URL_NAMES = {
  prompt: 'prompt',
  negativePrompt: 'negative',
  seed: 'seed',
  guidance: 'scale',
  steps: 'steps',
  scheduler: 'scheduler',
} as const satisfies Partial<Record<keyof RequestMsg, string>>;

type UrlField = keyof typeof URL_NAMES;
const NUMBER_FIELDS: UrlField[] = ['seed', 'guidance', 'steps'];
const NUMERIC = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** A number field as typed: a numeric literal becomes its number; anything else stays text, so the
 * runtime's validator refuses it in its own words (a JS integer arrives in Python as an int). */
function numberOrText(s: string): number | string {
  return NUMERIC.test(s.trim()) ? Number(s.trim()) : s;
}

export class UrlState {
  /** The request fields the URL gave, as typed (a bad number stays text). */
  readonly request: Partial<Record<UrlField, string | number>> = {};
  /** The compare view's second prompt (?compare=…), or null. */
  readonly compare: string | null;
  /** The step (1-based, as the page shows it) to select once the URL's run has it; null: none or done. */
  #pendingStep: number | null = null;
  #autoRun: boolean;
  /** Runs with a larger id than this are the URL's run or later ones. */
  #after = -1;

  constructor(search: string) {
    const params = new URLSearchParams(search);
    for (const [field, name] of Object.entries(URL_NAMES) as [UrlField, string][]) {
      const v = params.get(name);
      if (v === null) continue;
      this.request[field] = NUMBER_FIELDS.includes(field) ? numberOrText(v) : v;
    }
    this.compare = params.get('compare');
    const step = Number.parseInt(params.get('step') ?? '', 10);
    // a step is where the reader looks, not part of the request: one that does not exist is ignored
    this.#pendingStep = Number.isFinite(step) && step >= 1 ? step : null;
    this.#autoRun = Object.keys(this.request).length > 0;
    if (!this.#autoRun) this.#pendingStep = null; // ?step= alone names no run
  }

  /** Did the URL give this request field? (Then the page's defaults leave it alone.) */
  gave(field: keyof RequestMsg): boolean {
    return field in this.request;
  }

  /** The page's default request with the URL's values over it. */
  apply(defaults: RequestMsg): RequestMsg {
    return { ...defaults, ...this.request } as RequestMsg;
  }

  /** Wire the URL to the page; call during the root component's set-up, after the effects that
   * fill the request's defaults (effects run in order, so the run sees those defaults). */
  connect(engine: EngineClient, selection: Selection, request: () => RequestMsg, run: () => void = () => engine.generate(request())) {
    // Run the URL's request once, as soon as the engine can.
    $effect(() => {
      if (!this.#autoRun || engine.state !== 'ready' || !engine.info) return;
      this.#autoRun = false;
      untrack(() => {
        this.#after = engine.trace?.runId ?? -1;
        run();
      });
    });
    // Select the URL's step when it exists, then keep the URL in step with the run and the step.
    $effect(() => {
      const t = engine.trace;
      // the URL's run was refused: its step belongs to no run
      if (engine.runError && !this.#autoRun && (t?.runId ?? -1) <= this.#after) this.#pendingStep = null;
      if (!t) return; // no run yet: the URL stays as it was loaded
      const tookStep = selection.tookStep;
      const index = selection.step;
      untrack(() => {
        if (this.#pendingStep !== null && t.runId > this.#after) {
          if (t.steps.length >= this.#pendingStep) {
            selection.selectStep(this.#pendingStep - 1);
            this.#pendingStep = null;
            return; // the selection changed: this effect runs again and writes the URL
          }
          if (t.done) this.#pendingStep = null; // the run has no such step
        }
        const step = this.#pendingStep ?? (tookStep && index !== null ? index + 1 : null);
        writeSoon(t.request, step);
      });
    });
  }
}

/** write(), once the next frame has painted: the address bar changes with the run, and changing it
 * saves the scroll position, which needs an up-to-date layout. Asked for mid-frame (a step has just
 * changed the views) it forced a layout of the page then and there: 150–500 ms on a first visit. */
let pending: { r: RequestMsg; step: number | null } | null = null;
function writeSoon(r: RequestMsg, step: number | null) {
  const first = pending === null;
  pending = { r, step };
  if (!first) return;
  const go = () => {
    const p = pending;
    pending = null;
    if (p) write(p.r, p.step);
  };
  if (typeof requestAnimationFrame === 'function') requestAnimationFrame(() => setTimeout(go, 0));
  else go();
}

/** Put the request that ran (as the runtime validated it) and the selected step into the URL. */
function write(r: RequestMsg, step: number | null) {
  const url = new URL(location.href);
  const p = url.searchParams;
  p.set(URL_NAMES.prompt, r.prompt);
  if (r.negativePrompt) p.set(URL_NAMES.negativePrompt, r.negativePrompt);
  else p.delete(URL_NAMES.negativePrompt);
  p.set(URL_NAMES.seed, String(r.seed));
  p.set(URL_NAMES.guidance, String(r.guidance));
  p.set(URL_NAMES.steps, String(r.steps));
  p.set(URL_NAMES.scheduler, r.scheduler);
  if (step !== null) p.set('step', String(step));
  else p.delete('step');
  if (url.href !== location.href) history.replaceState(history.state, '', url);
}

/** Keep the compare view's second prompt in the URL (?compare=…); empty removes it. */
export function writeCompare(text: string) {
  const url = new URL(location.href);
  if (text) url.searchParams.set('compare', text);
  else url.searchParams.delete('compare');
  if (url.href !== location.href) history.replaceState(history.state, '', url);
}

/** The bundle the engine runs, in the address bar (?bundle=…); the page's default bundle removes it. */
export function writeBundle(bundleUrl: string) {
  const url = new URL(location.href);
  const fallback = new URL(`${import.meta.env.BASE_URL}bundle/`, location.href).href;
  if (bundleUrl === fallback) url.searchParams.delete('bundle');
  else {
    const b = new URL(bundleUrl);
    url.searchParams.set('bundle', b.origin === location.origin ? b.pathname : b.href); // same origin: its path, shorter
  }
  if (url.href !== location.href) history.replaceState(history.state, '', url);
}

/** A page parameter that is not part of the run (?view=… the overview's open stage, ?tour=… the
 * walk's stop): set it, or remove it with null. */
export function writeParam(name: string, value: string | null) {
  const url = new URL(location.href);
  if (value) url.searchParams.set(name, value);
  else url.searchParams.delete(name);
  if (url.href !== location.href) history.replaceState(history.state, '', url);
}

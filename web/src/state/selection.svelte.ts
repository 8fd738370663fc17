// What the reader is looking at, shared by every view: the runs, the step and the token. One view
// picks (a thumbnail in the step strip, a token), the others show the same step or token.
//
// Why picks carry their run's id: a new run starts with nothing picked, without an effect having to
// reset anything. Until the reader picks a step, views follow the newest step as the run goes on;
// once it is done they open at the teaching step (derive/teach.ts: where ε_c and ε_u differ most),
// unless the reader asked to follow the newest step.
import { getContext, setContext } from 'svelte';
import { stepAt } from '../derive/steps';
import { teachingStep } from '../derive/teach';
import type { StepMsg, Trace } from '../lib/protocol';
import { heldTrace } from '../derive/held';

const KEY = Symbol('selection');

/** The reader's picks, shared by the page's Selection and every held view of it. */
class Picks {
  compare = $state.raw<Trace | null>(null);
  step = $state<{ runId: number; index: number } | null>(null);
  token = $state<{ runId: number; index: number } | null>(null);
  /** The run whose newest step the reader asked to follow (no teaching step for it). */
  follow = $state<number | null>(null);
}

export class Selection {
  #current: () => Trace | null;
  #picks: Picks;
  /** The teaching step of a finished run, computed once per run (not reactive state). */
  #teach: { runId: number; index: number | null } | null = null;

  /** `current`: where the current run comes from (the engine's growing Trace). */
  constructor(current: () => Trace | null, picks: Picks = new Picks()) {
    this.#current = current;
    this.#picks = picks;
  }

  /** A second run to compare with the current one (the compare view's). */
  get compare(): Trace | null {
    return this.#picks.compare;
  }
  set compare(t: Trace | null) {
    this.#picks.compare = t;
  }

  /** The same picks over a run that holds still while `open()` is false and the worker is still on it
   * (`inFlight()`: the run id whose steps, previews or CLIP scores are still coming): views off screen
   * do not redraw at every update (on two cores their drawing slowed the run by ~16%, issue 24); they
   * catch up once the worker is done with the run, or at once when they come into view. */
  held(open: () => boolean, inFlight: () => number | null): Selection {
    let kept: Trace | null = null;
    const shown = $derived.by(() => (kept = heldTrace(kept, this.current, open(), inFlight())));
    return new Selection(() => shown, this.#picks);
  }

  /** The run the views show. */
  get current(): Trace | null {
    return this.#current();
  }

  /** True once the reader took the step choice (picked a step of the current run); otherwise the
   * views follow the newest step. */
  get tookStep(): boolean {
    const t = this.current;
    return !!t && this.#picks.step?.runId === t.runId;
  }

  /** The step a finished run opens at when the reader has not chosen one (derive/teach.ts), or null
   * while the run streams. */
  get teachingStep(): number | null {
    const t = this.current;
    if (!t || !t.done || !t.steps.length) return null;
    if (this.#teach?.runId !== t.runId)
      this.#teach = { runId: t.runId, index: teachingStep(t.steps, t.timesteps.length, t.request.previewEvery) };
    return this.#teach.index;
  }

  /** True while the views show the teaching step (the reader chose no step and the run is done). */
  get atTeachingStep(): boolean {
    const t = this.current;
    return !!t && !this.tookStep && this.#picks.follow !== t.runId && this.teachingStep !== null;
  }

  /** The step index the views show (the picked one; else, once the run is done, the teaching step;
   * else the newest), or null before the first step. */
  get step(): number | null {
    const t = this.current;
    if (!t || !t.steps.length) return null;
    if (this.tookStep) return Math.min(this.#picks.step!.index, t.steps.length - 1);
    return this.atTeachingStep ? this.teachingStep : t.steps.length - 1;
  }

  /** The step the views show (see `step`), or null. */
  get currentStep(): StepMsg | null {
    return stepAt(this.current, this.step);
  }

  selectStep(index: number) {
    const t = this.current;
    if (t) this.#picks.step = { runId: t.runId, index };
  }

  /** Give the step choice back: follow the newest step again (after the run, too: no teaching step). */
  followNewest() {
    this.#picks.step = null;
    this.#picks.follow = this.current?.runId ?? null;
  }

  /** The picked position in the current run's prompt tokens, or null. */
  get token(): number | null {
    const t = this.current;
    return t && this.#picks.token?.runId === t.runId ? this.#picks.token.index : null;
  }

  /** Pick a prompt token; picking it again (or null) lets go. */
  selectToken(index: number | null) {
    const t = this.current;
    this.#picks.token = t && index !== null && index !== this.token ? { runId: t.runId, index } : null;
  }
}

/** Make a Selection for this component's subtree (the page's root calls this once). */
export function provideSelection(current: () => Trace | null): Selection {
  return setContext(KEY, new Selection(current));
}

/** Views below hold still while `open()` is false and the worker is on the run (see Selection.held). */
export function provideHeldSelection(open: () => boolean, inFlight: () => number | null): Selection {
  return setContext(KEY, useSelection().held(open, inFlight));
}

/** The Selection of the page (a view calls this during its set-up). */
export function useSelection(): Selection {
  const s = getContext<Selection | undefined>(KEY);
  if (!s) throw new Error('useSelection() outside provideSelection()');
  return s;
}

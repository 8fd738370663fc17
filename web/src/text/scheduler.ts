// The scheduler view's sentences: what each sampler does (with its paper and equation), what each of
// the runtime's scalars means, and the update rule's symbols. Checked against runtime/schedulers.py
// (which matches diffusers 0.39 step for step).
import { type Card, factsOf } from './card';
import { type Paragraph, type ViewText, m } from './parts';
import { SYM, fmtT } from './notation';

export interface SchedulerRun {
  /** runtime/schedulers.py's name: ddim, euler, dpmpp_2m, pndm, lms */
  scheduler: string;
  label?: string;
  /** steps the reader asked for */
  steps: number;
  /** the timesteps the run visits, one per UNet call */
  timesteps: number[];
  /** the scheduler config's timestep_spacing, if known */
  spacing?: string;
  /** ᾱ at the first timestep, if known (Trace.alphasCumprod[timesteps[0]]) */
  alphaBarFirst?: number;
  trainTimesteps?: number;
}

/** One line per sampler, with the paper it comes from. */
export function family(run: SchedulerRun): Paragraph {
  switch (run.scheduler) {
    case 'ddim':
      return [
        'DDIM with η = 0 (Song et al. 2021, eq. 12) is deterministic: from ε̂ it estimates the clean latent ',
        m(SYM.x0hat),
        ', then moves to the next timestep’s noise level along the same ε̂: ',
        m('x_{t′} = √ᾱ_{t′}·x̂₀ + √(1−ᾱ_{t′})·ε̂'),
        '. One UNet call per step, no history.',
      ];
    case 'euler':
      return [
        'Euler takes one first-order step of the probability-flow ODE in σ (Karras et al. 2022, Algorithm 1 without its second-order correction): the slope is ',
        m('(x − x̂₀)/σ = ε̂'),
        ', so x moves by ',
        m('(σ_next − σ)·ε̂'),
        '. One UNet call per step, no history.',
      ];
    case 'dpmpp_2m':
      return [
        'DPM-Solver++ 2M (Lu et al. 2022) is a second-order multistep solver in the log signal-to-noise ratio λ: it combines this step’s ',
        m(SYM.x0hat),
        ' with the previous step’s, so the update uses the previous step’s input and prediction too (the first and the last step are first order).',
      ];
    case 'pndm':
      return [...pndmText(run)];
    case 'lms':
      return [
        'LMS is a linear multistep method in σ (as in Karras et al. 2022’s k-diffusion) of order up to 4: it integrates a polynomial through the last few slopes ',
        m('(x − x̂₀)/σ'),
        ', so earlier steps’ noise predictions enter the update.',
      ];
    default:
      return [];
  }
}

/** PNDM in its PLMS form (Liu et al. 2022): extrapolation, and why 25 steps make 26 UNet calls. */
export function pndmText(run: SchedulerRun): Paragraph {
  const out: Paragraph = [
    'PNDM (Liu et al. 2022), in the PLMS form Stable Diffusion uses, is a linear multistep method: from the fourth step on it extrapolates from the last four noise predictions with the Adams–Bashforth weights ',
    m('(55·ε̂₀ − 59·ε̂₋₁ + 37·ε̂₋₂ − 9·ε̂₋₃)/24'),
    ' (the newest first) — an extrapolation, not an average — and steps with that estimate.',
  ];
  const w = warmupText(run);
  if (w) out.push(` ${w}`);
  return out;
}

/** Why a run makes more UNet calls than steps (PNDM's warm-up), or null when it makes one per step. */
export function warmupText(run: SchedulerRun): string | null {
  const calls = run.timesteps.length;
  const extra = calls - run.steps;
  if (extra === 1 && calls >= 3) {
    const [t0, t1] = run.timesteps;
    return `Its warm-up takes the first step twice: a plain step from timestep ${fmtT(t0)} to ${fmtT(t1)}, then the UNet is asked again at ${fmtT(t1)} and the first step is redone from ${fmtT(t0)} with the mean of the two predictions (a second-order start). So ${run.steps} steps make ${calls} UNet calls, and timestep ${fmtT(t1)} appears twice.`;
  }
  if (extra > 1)
    return `Its warm-up runs Runge–Kutta stages (four UNet calls per warm-up step), so ${run.steps} steps make ${calls} UNet calls.`;
  return null;
}

/** The paper and equation of the update rule the view writes out. */
export function updateSource(scheduler: string): string {
  switch (scheduler) {
    case 'ddim':
      return 'DDIM, Song et al. 2021, eq. 12 with σ_t = 0';
    case 'euler':
      return 'Euler step in σ, Karras et al. 2022, Algorithm 1 without the second-order correction';
    case 'dpmpp_2m':
      return 'DPM-Solver++(2M), Lu et al. 2022, Algorithm 2';
    case 'pndm':
      return 'PLMS, Liu et al. 2022 (pseudo linear multistep, Adams–Bashforth weights)';
    case 'lms':
      return 'linear multistep in σ, as in Karras et al. 2022’s k-diffusion';
    default:
      return '';
  }
}

/** Where the run starts on the noise schedule: SD's "leading" spacing does not start at the last training timestep. */
export function startNote(run: SchedulerRun): Paragraph | null {
  const T = run.trainTimesteps ?? 1000;
  const first = run.timesteps[0];
  if (first === undefined || first >= T - 1) return null;
  const a = run.alphaBarFirst;
  return [
    `This run starts at timestep ${fmtT(first)}, not ${T - 1}`,
    run.spacing ? ` (“${run.spacing}” spacing, as in Stable Diffusion’s configs)` : '',
    ': the seed’s pure noise is handed to the UNet as if it were timestep ',
    fmtT(first),
    a !== undefined ? `, where ᾱ = ${Number(a.toPrecision(2))} (a little signal would be left)` : '',
    '. Lin et al. 2024 discuss this mismatch.',
  ];
}

/** The ᾱ chart's note (Ho et al. 2020, eq. 4). */
export function scheduleNote(trainTimesteps: number, visited: number): Paragraph {
  return [
    'ᾱ_t is the share of the clean latent’s variance left at training timestep t: ',
    m('x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε'),
    ` (Ho et al. 2020, eq. 4). Training used all ${trainTimesteps} timesteps; this run visits ${visited} of them.`,
  ];
}

/** The update rule's left-hand side: the next x, at the timestep t′ this step lands on. */
export function updateLhs(last: boolean, stride?: number, sigmaBased = false): { math: string; note: string } {
  return {
    math: SYM.xNext,
    note: last
      ? sigmaBased
        ? 'the final latent: after the last step there is no next step; it lands on σ = 0'
        : 'the final latent: after the last step there is no next step; it lands on ᾱ₀ (see alpha_prod_t_prev)'
      : `the next x: the input of the next step, at timestep t′${stride ? ` = t − ${stride}` : ''} (one step jumps ${stride ?? 'many'} timesteps, so it is not x_{t−1})`,
  };
}

/** A term of the runtime's linear combination (runtime names: x_t, eps, eps@k, x@k). */
export function termSymbol(term: string): { base: string; sub: string; note: string } {
  if (term === 'x_t') return { base: 'x', sub: 't', note: 'this step’s input latent' };
  if (term === 'eps') return { base: 'ε̂', sub: 't', note: 'this step’s guided noise prediction' };
  const k = /^(eps|x)@(\d+)$/.exec(term);
  if (k) {
    const n = Number(k[2]) + 1;
    return k[1] === 'eps'
      ? { base: 'ε̂', sub: `step ${n}`, note: `the guided noise prediction of step ${n}, kept by the multistep method` }
      : { base: 'x', sub: `step ${n}`, note: `the input latent of step ${n}` };
  }
  return { base: '(other)', sub: '', note: 'a tensor the runtime did not name' };
}

/** DDIM's two coefficients by symbol (Song et al. 2021, eq. 12 with σ_t = 0), shown beside their numbers. */
export const DDIM_COEFFICIENTS: { term: string; math: string }[] = [
  { term: 'x_t', math: 'a = √(ᾱ_{t′}/ᾱ_t)' },
  { term: 'eps', math: 'b = √(1−ᾱ_{t′}) − √(ᾱ_{t′}(1−ᾱ_t)/ᾱ_t)' },
];

export interface CoefficientContext {
  last?: boolean;
  /** the scheduler config's set_alpha_to_one (SD: false) */
  setAlphaToOne?: boolean;
}

/** What each scalar of step.coefficients means. */
export function coefficientMeaning(key: string, value?: number, ctx: CoefficientContext = {}): string {
  const lms = /^lms_coeff_(\d+)$/.exec(key);
  if (lms)
    return `weight of the slope ${lms[1] === '0' ? 'of this step' : `${lms[1]} step${lms[1] === '1' ? '' : 's'} back`} (its Lagrange polynomial integrated from σ to σ_next)`;
  switch (key) {
    case 'timestep':
      return 't: the training timestep the UNet was told (how noisy x_t is now)';
    case 'prev_timestep':
      return value !== undefined && value < 0
        ? 't′: below 0 at the last step: the step lands on ᾱ₀ instead'
        : 't′: the timestep this step lands on';
    case 'alpha_prod_t':
      return 'ᾱ_t: the share of signal variance left at t';
    case 'alpha_prod_t_prev':
      if (ctx.last)
        return ctx.setAlphaToOne
          ? 'ᾱ_{t′} = 1 at the last step (set_alpha_to_one): the clean latent'
          : 'ᾱ_{t′} at the last step is ᾱ₀, the first training timestep’s (set_alpha_to_one is false), not 1';
      return 'ᾱ_{t′}: ᾱ at the timestep this step lands on';
    case 'sigma':
      return 'σ_t: the noise level, x_t/√ᾱ_t = x̂₀ + σ_t·ε';
    case 'sigma_next':
      return 'σ after this step (0: clean)';
    case 'dt':
      return 'σ_next − σ: the Euler step in σ';
    case 'alpha_t':
      return 'α_t = 1/√(σ²+1): the signal scale';
    case 'sigma_t':
      return 'σ·α_t: the noise scale';
    case 'lambda':
      return 'λ = −log σ: the log signal-to-noise ratio';
    case 'h':
      return 'λ_next − λ: the step in log-SNR';
    case 'r0':
      return 'previous step size ÷ this one (weights the second-order correction)';
    case 'order':
      return 'how many noise estimates this step combines';
    case 'stage':
      return 'Runge–Kutta stage (0–3) of the warm-up';
    default:
      return '';
  }
}

/** The scheduler view: takeaway, then the folded detail. */
export function schedulerText(card: Card, run: SchedulerRun): ViewText {
  const f = factsOf(card);
  const detail: Paragraph[] = [family(run)];
  const start = startNote(run);
  if (start) detail.push(start);
  if (f?.scheduler?.ships && f.scheduler.why) detail.push([`This model ships ${f.scheduler.ships}: ${f.scheduler.why}.`]);
  return {
    title: `Scheduler${run.label ? `: ${run.label}` : ''}`,
    takeaway: 'The scheduler picks which timesteps the run visits and turns each guided noise prediction ε̂ into the next, less noisy x.',
    detail,
  };
}

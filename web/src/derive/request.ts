// The form's request before and after the runtime has said its defaults (EngineInfo.request):
// until then the numbers are unknown (NaN: the form shows them empty), so no number is shown that
// would change a moment later.
import type { RequestMsg } from '../lib/protocol';

/** A request with nothing chosen yet: empty text, unknown numbers. */
export const UNSET_REQUEST: RequestMsg = {
  prompt: '',
  negativePrompt: '',
  seed: NaN,
  guidance: NaN,
  steps: NaN,
  scheduler: '',
  previewEvery: NaN,
};

const isUnset = (v: unknown) => v === '' || (typeof v === 'number' && Number.isNaN(v));

/** The draft with the runtime's defaults in every field nobody set: not given by the URL (`given`),
 * and still empty / unknown (text typed while the model loaded is kept). */
export function withDefaults(draft: RequestMsg, defaults: RequestMsg, given: (field: keyof RequestMsg) => boolean): RequestMsg {
  const out = { ...draft } as Record<keyof RequestMsg, unknown>;
  for (const k of Object.keys(defaults) as (keyof RequestMsg)[]) {
    if (!given(k) && isUnset(out[k])) out[k] = defaults[k];
  }
  return out as unknown as RequestMsg;
}

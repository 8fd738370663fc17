// One-word changes of a prompt that the model knows, from its model card's vocabulary: the
// reference's "change one word and see what changes", as suggestions (text editing only).

/** Up to `n` prompts that differ from `prompt` in one object or one background word. */
export function oneWordChanges(prompt: string, vocabulary: Record<string, string[]>, n = 3): string[] {
  const objects = (vocabulary.objects ?? []).filter((o) => !o.includes(' '));
  const colours = ['red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'white', 'gray'];
  const words = prompt.split(/(\s+)/);
  const out: string[] = [];
  const swap = (i: number, list: string[]) => {
    const w = words[i].toLowerCase();
    const at = list.indexOf(w);
    for (let k = 1; k < list.length && out.length < n; k += Math.max(1, Math.floor(list.length / (n + 1)))) {
      const copy = [...words];
      copy[i] = list[(at + k) % list.length];
      const p = copy.join('');
      if (!out.includes(p)) out.push(p);
      if (out.length >= Math.ceil(n / 2) && list === objects) break;
    }
  };
  const obj = words.findIndex((w) => objects.includes(w.toLowerCase()));
  if (obj >= 0) swap(obj, objects);
  const col = words.findIndex((w) => colours.includes(w.toLowerCase()));
  if (col >= 0 && vocabulary.backgrounds?.length) swap(col, colours);
  return out.slice(0, n);
}

/** The prompt with its first object word swapped for the model card's next object, or null when
 * the prompt names none (the clip view asks CLIP about this one change). */
export function nextObject(prompt: string, vocabulary: Record<string, string[]>): string | null {
  const objects = (vocabulary.objects ?? []).filter((o) => !o.includes(' '));
  const words = prompt.split(/(\s+)/);
  const at = words.findIndex((w) => objects.includes(w.toLowerCase()));
  if (at < 0) return null;
  words[at] = objects[(objects.indexOf(words[at].toLowerCase()) + 1) % objects.length];
  return words.join('');
}

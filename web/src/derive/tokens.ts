// CLIP's tokens as the page shows them: which are special, their text without the end-of-word mark,
// the padding after them, the words the model card does not list, and what two prompts do not share.
import type { TokensMsg } from '../lib/protocol';

export const START = '<|startoftext|>';
export const END = '<|endoftext|>';
const END_OF_WORD = '</w>';

/** The start/end markers the tokenizer adds. */
export const isSpecial = (t: string) => t === START || t === END;
/** Does this token end a word (CLIP's byte-pair `</w>` suffix)? */
export const endsWord = (t: string) => t.endsWith(END_OF_WORD);
/** The token's text without the end-of-word mark. */
export const tokenText = (t: string) => (endsWord(t) ? t.slice(0, -END_OF_WORD.length) : t);

/** The padding after the last real token: its count, the pad id, and whether that id is the end token's. */
export function padding(tok: TokensMsg): { n: number; padId: number | null; isEos: boolean } {
  const n = Math.max(0, tok.ids.length - tok.length);
  const padId = n ? tok.ids[tok.length] : null;
  return { n, padId, isEos: padId === tok.ids[tok.length - 1] };
}

/** Words the model card does not list, joined from the runtime's per-token flags (Plan.tokenKnown):
 * consecutive unknown tokens up to a word's end make one word; each word once. */
export function unknownWords(tok: TokensMsg, known: boolean[] | null): string[] {
  if (!known) return [];
  const out: string[] = [];
  let word = '';
  tok.tokens.forEach((t, i) => {
    if (known[i] !== false) return;
    word += tokenText(t);
    if (endsWord(t) || i === tok.tokens.length - 2 || known[i + 1] !== false) {
      if (!out.includes(word)) out.push(word);
      word = '';
    }
  });
  return out;
}

/** The dropped words as one text, cut at `maxChars` (a pasted essay must not fill the page). */
export function droppedText(tok: TokensMsg, maxChars: number): { text: string; more: number } {
  const all = tok.droppedWords.join(' ');
  return all.length > maxChars ? { text: all.slice(0, maxChars), more: all.length - maxChars } : { text: all, more: 0 };
}

/** ‘a’, ‘b’ and N more words: a quoted list that stays short. */
export function quoteList(words: string[], most = 12, wordChars = 40): string {
  const q = words
    .slice(0, most)
    .map((w) => `‘${w.length > wordChars ? `${w.slice(0, wordChars)}…` : w}’`)
    .join(', ');
  return words.length > most ? `${q} and ${words.length - most} more words` : q;
}

/** Positions of the tokens the two id lists do not share (a longest-common-subsequence alignment). */
export function differing(x: number[], y: number[]): [Set<number>, Set<number>] {
  const L = Array.from({ length: x.length + 1 }, () => new Array<number>(y.length + 1).fill(0));
  for (let i = x.length - 1; i >= 0; i--)
    for (let j = y.length - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const sx = new Set<number>();
  const sy = new Set<number>();
  let i = 0;
  let j = 0;
  while (i < x.length && j < y.length) {
    if (x[i] === y[j]) {
      i++;
      j++;
    } else if (L[i + 1][j] >= L[i][j + 1]) sx.add(i++);
    else sy.add(j++);
  }
  while (i < x.length) sx.add(i++);
  while (j < y.length) sy.add(j++);
  return [sx, sy];
}

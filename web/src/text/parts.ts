// What the text modules return: plain strings and math strings, never HTML (the page never inserts
// text as HTML). A view renders a Paragraph part by part: strings as text, { math } with its formula style.

export interface MathPart {
  math: string;
}
export type Part = string | MathPart;
export type Paragraph = Part[];

/** A view's words: a one-line takeaway in plain words, then the detail (folded below it). */
export interface ViewText {
  title: string;
  takeaway: string;
  detail: Paragraph[];
}

export function m(math: string): MathPart {
  return { math };
}

/** A paragraph as plain text (math strings inline): for aria labels, tests and the README. */
export function plain(p: Paragraph | Paragraph[]): string {
  const flat = (q: Paragraph) => q.map((x) => (typeof x === 'string' ? x : x.math)).join('');
  return Array.isArray(p[0]) ? (p as Paragraph[]).map(flat).join('\n') : flat(p as Paragraph);
}

/** The whole view text as one string (title, takeaway, detail). */
export function allText(v: ViewText): string {
  return [v.title, v.takeaway, plain(v.detail)].join('\n');
}

/** 0.922 → "92%". */
export function pct(x: number): string {
  return `${Math.round(x * 100)}%`;
}

const thousands = new Intl.NumberFormat('en-US');

/** 40000 → "40,000" (one formatter for all: toLocaleString builds one per call, ~40 ms of a first render). */
export function count(n: number): string {
  return thousands.format(n);
}

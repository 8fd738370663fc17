// The page's named colours, once. Canvas and D3 code import them from here; CSS reads the same
// values as custom properties (`--run`, `--selected`, `--diverging-ramp`, `--cluster-3` …) that
// `installPalette` sets on :root at start-up, so a legend and the canvas it explains cannot differ.
import { interpolateRdBu, interpolateViridis, schemeTableau10 } from 'd3-scale-chromatic';

export const palette = {
  /** The reader's run (tracks, its series in charts). */
  run: '#2f5fd0',
  /** The compare run (the second prompt) and a second prompt's series. */
  compare: '#7a3fb0',
  /** The selected step, wherever it is marked. */
  selected: '#e8590c',
  /** A second quantity in one chart (e.g. images beside latents). */
  second: '#d0822f',
  /** Tokens that differ between two prompts. */
  changed: '#ffd27a',
  /** Tokens: a plain chip, and the start/end markers. */
  chip: '#eef1f6',
  specialBg: '#e3e0f5',
  specialInk: '#5b4fa8',
  /** Something the reader should notice (dropped words, a clamped value). */
  caution: '#9a5b00',
  /** A word the model never saw. */
  unknown: '#d03030',
  /** The halo under a line drawn over a busy canvas (the map's tracks), so it reads on any cluster. */
  halo: '#ffffff',
} as const;

/** Signed values: blue (negative) – white (0) – red (positive); t in [0, 1]. */
export const diverging = (t: number) => interpolateRdBu(1 - t);
/** Magnitudes: viridis; t in [0, 1]. */
export const sequential = (t: number) => interpolateViridis(t);

/** Categorical colours for clusters (the UMAP's reference prompts): index modulo the length. */
export const clusters: readonly string[] = [
  ...schemeTableau10,
  '#1b9e77',
  '#d95f02',
  '#7570b3',
  '#e7298a',
  '#66a61e',
  '#a6761d',
  '#666666',
  '#e6ab02',
];
export const cluster = (i: number) => clusters[i % clusters.length];

/** Runs drawn over the UMAP's reference cloud: colours that no cluster colour comes near (CIELAB
 * ΔE ≥ 40 from every one, checked in derive/tracks.test.ts), so a track never hides in a cluster. */
export const tracks = {
  run: '#0000ff',
  compare: '#ff00ff',
  side: ['#000000', '#000080', '#400040', '#c0ff00', '#00ff00', '#ff80ff'],
} as const;

/** A CSS gradient of an interpolator, for legends and swatches. */
export function ramp(interpolate: (t: number) => string, stops = 9): string {
  const cs = Array.from({ length: stops }, (_, i) => interpolate(i / (stops - 1)));
  return `linear-gradient(to right, ${cs.join(', ')})`;
}

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Every custom property the stylesheet reads, name → value. */
export function paletteProperties(): Record<string, string> {
  const props: Record<string, string> = {};
  for (const [k, v] of Object.entries(palette)) props[`--${kebab(k)}`] = v;
  props['--diverging-ramp'] = ramp(diverging);
  props['--sequential-ramp'] = ramp(sequential);
  clusters.forEach((c, i) => (props[`--cluster-${i}`] = c));
  return props;
}

/** Set the palette's custom properties on an element (the page calls it on :root before mounting). */
export function installPalette(el: HTMLElement) {
  for (const [k, v] of Object.entries(paletteProperties())) el.style.setProperty(k, v);
}

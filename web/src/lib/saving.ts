// Taking things out of the page: a file download, a chart as SVG (with its palette colours written
// in, so it looks the same outside the page) or PNG, and the denoising as an animated GIF (gifenc).
import { applyPalette, GIFEncoder, quantize } from 'gifenc';
import type { Rgba } from '../derive/image';

/** Save bytes (or a blob) under a file name, through a temporary link. */
export function download(data: Uint8Array | Blob | string, name: string, type = 'application/octet-stream') {
  const blob = data instanceof Blob ? data : new Blob([data as BlobPart], { type });
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.rel = 'noopener';
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** An animated GIF of the frames (one palette of 256 colours per frame); the last frame holds longer. */
export function gifOf(frames: Rgba[], delayMs = 150, holdMs = 1500): Uint8Array {
  const gif = GIFEncoder();
  frames.forEach((f, i) => {
    const palette = quantize(f.data, 256);
    gif.writeFrame(applyPalette(f.data, palette), f.width, f.height, {
      palette,
      delay: i === frames.length - 1 ? holdMs : delayMs,
      ...(i === 0 ? { repeat: 0 } : {}),
    });
  });
  gif.finish();
  return gif.bytes();
}

// what the page's CSS decides about an SVG's look (custom properties resolved by the browser)
const STYLE_PROPS = [
  'fill',
  'fill-opacity',
  'stroke',
  'stroke-width',
  'stroke-opacity',
  'stroke-dasharray',
  'stroke-linecap',
  'opacity',
  'font-family',
  'font-size',
  'font-weight',
  'font-style',
  'text-anchor',
  'dominant-baseline',
  'visibility',
  'display',
];

/** The SVG as a standalone file: every element's computed colours and text styles written inline
 * (the palette's CSS variables mean nothing outside the page), its size fixed, a background rect. */
export function serializeSvg(svg: SVGSVGElement, background = '#ffffff'): string {
  const clone = svg.cloneNode(true) as SVGSVGElement;
  const from = [svg, ...svg.querySelectorAll('*')];
  const to = [clone, ...clone.querySelectorAll('*')];
  from.forEach((el, i) => {
    const cs = getComputedStyle(el);
    to[i].setAttribute('style', STYLE_PROPS.map((p) => `${p}:${cs.getPropertyValue(p)}`).join(';'));
  });
  const box = svg.getBoundingClientRect();
  clone.setAttribute('xmlns', 'http://www.w3.org/2000/svg');
  clone.setAttribute('width', String(Math.round(box.width)));
  clone.setAttribute('height', String(Math.round(box.height)));
  if (!clone.getAttribute('viewBox')) clone.setAttribute('viewBox', `0 0 ${Math.round(box.width)} ${Math.round(box.height)}`);
  const bg = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
  bg.setAttribute('width', '100%');
  bg.setAttribute('height', '100%');
  bg.setAttribute('fill', background);
  clone.prepend(bg);
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(clone);
}

/** A chart (SVG or canvas) as a PNG blob; SVGs are drawn at `scale`× for sharp text. */
export async function chartPng(el: SVGSVGElement | HTMLCanvasElement, scale = 2): Promise<Blob> {
  if (el instanceof HTMLCanvasElement) return toBlob(el);
  const text = serializeSvg(el);
  const box = el.getBoundingClientRect();
  const img = new Image();
  img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}`;
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = Math.max(1, Math.round(box.width * scale));
  canvas.height = Math.max(1, Math.round(box.height * scale));
  canvas.getContext('2d')!.drawImage(img, 0, 0, canvas.width, canvas.height);
  return toBlob(canvas);
}

function toBlob(canvas: HTMLCanvasElement): Promise<Blob> {
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('the chart could not be drawn'))), 'image/png'),
  );
}

/** A chart the reader can save: an SVG or canvas inside a view, with a name for its file. */
export interface Chart {
  id: string;
  label: string;
  el: SVGSVGElement | HTMLCanvasElement;
}

/** The charts in the page's views now (SVGs and canvases at least 40 px a side), named by view. */
export function chartsInPage(root: ParentNode = document): Chart[] {
  const counts = new Map<string, number>();
  const out: Chart[] = [];
  for (const el of root.querySelectorAll<SVGSVGElement | HTMLCanvasElement>('[data-view] svg, [data-view] canvas')) {
    if (el instanceof SVGSVGElement && el.ownerSVGElement) continue; // nested svg: part of its parent
    const box = el.getBoundingClientRect();
    if (box.width < 40 || box.height < 40) continue;
    const view = el.closest<HTMLElement>('section[data-view], article[data-view]') ?? el.closest<HTMLElement>('[data-view]');
    const name = view?.dataset.view ?? 'chart';
    const n = (counts.get(name) ?? 0) + 1;
    counts.set(name, n);
    const what = el.getAttribute('aria-label') ?? el.closest('figure')?.querySelector('figcaption')?.textContent ?? '';
    out.push({ id: `${name}-${n}`, label: `${name} ${n}${what ? ` — ${what.trim().slice(0, 60)}` : ''}`, el });
  }
  return out;
}

// Checks of a bundle the reader opens, made before anything is downloaded or run: its address, the
// paths its manifest names, a local folder against the manifest, and whether the model can fit in
// WebAssembly's memory. Each answers null (fine) or ONE line naming the address or the file.
import type { Manifest } from '../lib/bundleLoader';

/** WebAssembly (wasm32) addresses at most 65,536 pages of 64 KiB: 4 GiB. onnxruntime-web's WASM
 * build is compiled with that maximum. */
export const WASM_LIMIT_BYTES = 4 * 1024 ** 3;
/** A margin for onnxruntime-web's own code, thread stacks and arena slack, whatever the model. */
export const WASM_FIXED_BYTES = 128 * 1024 ** 2;
/** Stable Diffusion 1.x's UNet attention heads (SD 2.x has 5 at the full-resolution level: fewer). */
export const ATTENTION_HEADS = 8;

/** The bundle address a reader typed or put in ?bundle=: an absolute http(s) folder URL (a URL
 * ending in manifest.json names its folder), or one line saying why not. */
export function bundleAddress(raw: string, pageHref: string): { url: string } | { error: string } {
  const text = raw.trim();
  const shown = text.length > 60 ? `${text.slice(0, 57)}…` : text;
  if (!text) return { error: 'no bundle address given: paste the http(s) address of a bundle folder (the one with manifest.json)' };
  let url: URL;
  try {
    url = new URL(text, pageHref);
  } catch {
    return { error: `“${shown}” is not a web address: give the http(s) address of a bundle folder (the one with manifest.json)` };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return {
      error: `refusing the bundle address “${shown}”: only http:// and https:// addresses can be opened (this one is ${url.protocol.replace(':', '')}:)`,
    };
  }
  if (url.username || url.password) return { error: `refusing the bundle address “${shown}”: it carries a user name or password` };
  url.hash = '';
  if (url.pathname.endsWith('/manifest.json')) url.pathname = url.pathname.slice(0, -'manifest.json'.length);
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return { url: url.href };
}

/** A path inside the bundle: relative, forward slashes, no '', '.', '..' segment, no drive or NUL
 * (runtime/bundle.py's safe_relpath, the same rule). */
export function safeRelPath(rel: unknown): boolean {
  if (typeof rel !== 'string' || !rel || rel.includes('\\') || rel.includes('\0') || rel.startsWith('/')) return false;
  const parts = rel.split('/');
  if (parts[0].includes(':')) return false;
  return parts.every((p) => p !== '' && p !== '.' && p !== '..');
}

/** The manifest's file table and component files: safe paths, sizes and sha256s of the right form. */
export function manifestProblem(manifest: Manifest): string | null {
  if (!manifest || typeof manifest.files !== 'object' || manifest.files === null)
    return 'manifest.json has no file table; re-export the bundle';
  for (const [rel, info] of Object.entries(manifest.files)) {
    if (!safeRelPath(rel)) return `manifest.json names a file outside the bundle (${JSON.stringify(rel)}); refusing the bundle`;
    if (!info || !Number.isSafeInteger(info.bytes) || info.bytes < 0)
      return `manifest.json gives ${rel} no valid byte size; re-export the bundle`;
    if (typeof info.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(info.sha256))
      return `manifest.json gives ${rel} no valid sha256; re-export the bundle`;
  }
  for (const [name, comp] of Object.entries(manifest.components ?? {})) {
    for (const f of comp?.files ?? []) {
      if (!safeRelPath(f)) return `manifest.json names a file outside the bundle (${JSON.stringify(f)}) for ${name}; refusing the bundle`;
      if (!(f in manifest.files)) return `manifest.json lists ${f} for ${name} but not in its file table; re-export the bundle`;
    }
  }
  return null;
}

export interface WasmNeed {
  /** Bytes of every session's files (all sessions live at once in onnxruntime-web's one heap). */
  weights: number;
  /** Extra for fp16 components: WASM's CPU kernels run them in fp32, so their weights are widened. */
  widened: number;
  /** The largest self-attention's scores and softmax, batch 2 (classifier-free guidance), fp32. */
  attention: number;
  total: number;
  /** The largest file among the sessions' (the one a message names). */
  largest: { file: string; bytes: number };
}

/** What a bundle needs of WebAssembly's memory, from its manifest alone (before downloading it). */
export function wasmNeed(manifest: Manifest): WasmNeed {
  let weights = 0;
  let widened = 0;
  let largest = { file: '', bytes: -1 };
  for (const comp of Object.values(manifest.components ?? {})) {
    const bytes = (comp.files ?? []).reduce((s, f) => s + (manifest.files[f]?.bytes ?? 0), 0);
    weights += bytes;
    if (comp.precision === 'fp16') widened += bytes * 2; // fp16 → fp32 copies: twice the fp16 bytes
    for (const f of comp.files ?? []) {
      const b = manifest.files[f]?.bytes ?? 0;
      if (b > largest.bytes) largest = { file: f, bytes: b };
    }
  }
  const [h, w] = manifest.model?.latent_size ?? [0, 0];
  const tokens = h * w;
  const attention = 2 * 2 * ATTENTION_HEADS * tokens * tokens * 4;
  return { weights, widened, attention, total: weights + widened + attention + WASM_FIXED_BYTES, largest };
}

export const gb = (bytes: number) => `${(bytes / 1e9).toFixed(bytes >= 1e10 ? 0 : 2)} GB`;

/** One line when the model cannot run on WASM (decided from the manifest, before any download). */
export function wasmProblem(manifest: Manifest): string | null {
  const need = wasmNeed(manifest);
  if (need.total <= WASM_LIMIT_BYTES) return null;
  const [h, w] = manifest.model?.image_size ?? [0, 0];
  const parts = [`weights ${gb(need.weights)}`];
  if (need.widened) parts.push(`fp16 widened to fp32 ${gb(need.widened)}`);
  if (need.attention >= 1e8) parts.push(`attention at ${h}×${w} ${gb(need.attention)}`);
  return (
    `${need.largest.file} (${gb(need.largest.bytes)}) and the rest of this model need about ${gb(need.total)} of WebAssembly memory ` +
    `(${parts.join(', ')}), more than WASM's 4 GB: nothing was downloaded. Open it on a machine with WebGPU, or export a smaller build`
  );
}

/** A picked or dropped folder: each file's path as the browser gives it ("top/sub/file"). */
export interface FolderFile {
  path: string;
  size: number;
}

/** The folder's manifest.json (the shallowest one) and the prefix to strip from every path. */
export function folderRoot(files: FolderFile[]): { manifest: string; prefix: string } | null {
  const manifests = files.map((f) => f.path).filter((p) => p === 'manifest.json' || p.endsWith('/manifest.json'));
  if (!manifests.length) return null;
  manifests.sort((a, b) => a.split('/').length - b.split('/').length || a.localeCompare(b));
  const manifest = manifests[0];
  return { manifest, prefix: manifest.slice(0, -'manifest.json'.length) };
}

/** Every file the manifest lists is in the folder with its size; else one line naming the file. */
export function folderProblem(manifest: Manifest, files: FolderFile[], prefix: string): string | null {
  const sizes = new Map(files.filter((f) => f.path.startsWith(prefix)).map((f) => [f.path.slice(prefix.length), f.size]));
  for (const [rel, info] of Object.entries(manifest.files)) {
    const size = sizes.get(rel);
    if (size === undefined) return `${rel} is missing from the folder; export the bundle again or pick the whole folder`;
    if (size !== info.bytes)
      return `${rel} in the folder has ${size} bytes, the manifest says ${info.bytes}; the folder is damaged — export it again`;
  }
  return null;
}

/** A cached bundle's short name for the list: its fingerprint's first 12 hex digits. */
export const shortFingerprint = (fp: string) => fp.slice(0, 12);

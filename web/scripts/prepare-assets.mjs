// Puts what the page loads at run time (not bundled by Vite) into public/, so that `vite`,
// `vite build` and `vite preview` all serve it from the page's own origin:
//   public/pyodide/  Pyodide's core (its .mjs is imported at run time, not bundled)
//   public/ort/      onnxruntime-web's .mjs/.wasm pairs (imported by ORT from env.wasm.wasmPaths;
//                    its thread workers re-import the .mjs, which must not be an app chunk)
//   public/runtime/runtime.zip  the pure-Python controller: the runtime/ modules Pyodide imports
//
// Why a plain zip and not pyodide-build: pyodide-build exists to cross-compile packages with
// native code, and it first downloads a cross-build environment from GitHub releases, which this
// project's machines cannot reach. runtime/ is standard-library Python, so Pyodide only needs the
// .py files on sys.path; a zip written here with Node's zlib needs no Python at build time.
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, deflateRawSync, deflateSync } from 'node:zlib';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pub = join(web, 'public');
const mods = join(web, 'node_modules');

function copyInto(srcDir, names, dstDir) {
  mkdirSync(dstDir, { recursive: true });
  for (const n of names) copyFileSync(join(srcDir, n), join(dstDir, n));
}

copyInto(join(mods, 'pyodide'),
  ['pyodide.mjs', 'pyodide.asm.mjs', 'pyodide.asm.wasm', 'python_stdlib.zip', 'pyodide-lock.json'],
  join(pub, 'pyodide'));

// The WASM-only build (14 MB) for the wasm provider, the JSEP build (28 MB, wasm + WebGPU) for webgpu.
copyInto(join(mods, 'onnxruntime-web', 'dist'),
  ['ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm',
   'ort-wasm-simd-threaded.jsep.mjs', 'ort-wasm-simd-threaded.jsep.wasm'],
  join(pub, 'ort'));

/** A zip archive (deflate) of [name, bytes] entries; fixed timestamps keep it reproducible. */
function zip(entries) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  const DOS_TIME = 0, DOS_DATE = (1980 - 1980) << 9 | 1 << 5 | 1;
  for (const [name, data] of entries) {
    const nameBuf = Buffer.from(name, 'utf8');
    const packed = deflateRawSync(data, { level: 9 });
    const crc = crc32(data);
    const head = Buffer.alloc(30);
    head.writeUInt32LE(0x04034b50, 0); head.writeUInt16LE(20, 4); head.writeUInt16LE(0x0800, 6);
    head.writeUInt16LE(8, 8); head.writeUInt16LE(DOS_TIME, 10); head.writeUInt16LE(DOS_DATE, 12);
    head.writeUInt32LE(crc, 14); head.writeUInt32LE(packed.length, 18); head.writeUInt32LE(data.length, 22);
    head.writeUInt16LE(nameBuf.length, 26); head.writeUInt16LE(0, 28);
    const cen = Buffer.alloc(46);
    cen.writeUInt32LE(0x02014b50, 0); cen.writeUInt16LE(20, 4); cen.writeUInt16LE(20, 6); cen.writeUInt16LE(0x0800, 8);
    cen.writeUInt16LE(8, 10); cen.writeUInt16LE(DOS_TIME, 12); cen.writeUInt16LE(DOS_DATE, 14);
    cen.writeUInt32LE(crc, 16); cen.writeUInt32LE(packed.length, 20); cen.writeUInt32LE(data.length, 24);
    cen.writeUInt16LE(nameBuf.length, 28); cen.writeUInt32LE(0o100644 << 16 >>> 0, 38); cen.writeUInt32LE(offset, 42);
    locals.push(head, nameBuf, packed);
    centrals.push(cen, nameBuf);
    offset += head.length + nameBuf.length + packed.length;
  }
  const cdSize = centrals.reduce((s, b) => s + b.length, 0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0); end.writeUInt16LE(entries.length, 8); end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdSize, 12); end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, ...centrals, end]);
}

const runtimeDir = resolve(web, '..', 'runtime');
// Exactly the modules Pyodide imports (runtime.web and what it imports); tests/test_layout.py checks
// this list against the code's imports. native.py (numpy, onnxruntime) and png.py (CLI) stay out.
const PAGE_MODULES = ['__init__.py', 'backend.py', 'bundle.py', 'clip.py', 'noise.py', 'pipeline.py', 'schedulers.py', 'tokenizer.py', 'trace.py', 'web.py'];
const pyFiles = PAGE_MODULES.filter((n) => statSync(join(runtimeDir, n), { throwIfNoEntry: false })?.isFile());
if (pyFiles.length !== PAGE_MODULES.length) throw new Error(`${runtimeDir} lacks ${PAGE_MODULES.filter((n) => !pyFiles.includes(n)).join(', ')}`);
const archive = zip(pyFiles.map((n) => [`runtime/${n}`, readFileSync(join(runtimeDir, n))]));
mkdirSync(join(pub, 'runtime'), { recursive: true });
writeFileSync(join(pub, 'runtime', 'runtime.zip'), archive);
const sha256 = createHash('sha256').update(archive).digest('hex');
writeFileSync(join(pub, 'runtime', 'runtime.json'), JSON.stringify({ files: pyFiles, bytes: archive.length, sha256 }, null, 1));
console.log(`prepare-assets: pyodide, onnxruntime-web and runtime.zip (${pyFiles.length} modules, ${archive.length} bytes) in public/`);

// The web app manifest's PNG icons (installability wants 192 and 512 px PNGs): the same picture as
// public/icons/icon.svg (noise on the left, the image it becomes on the right), drawn here so no
// binary is committed and no image tool is needed at build time.
function png(size) {
  const px = Buffer.alloc(size * (size * 4 + 1));
  const s = size / 512;
  const dots = [[92, 140, 14], [140, 96, 10], [120, 200, 12], [80, 270, 10], [150, 300, 14], [96, 372, 12], [160, 410, 9], [190, 160, 9], [200, 360, 8]];
  for (let y = 0; y < size; y++) {
    px[y * (size * 4 + 1)] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      const X = (x + 0.5) / s, Y = (y + 0.5) / s;
      const cx = Math.min(Math.max(X, 96), 416), cy = Math.min(Math.max(Y, 96), 416);
      const inside = Math.hypot(X - cx, Y - cy) <= 96;
      let c = inside ? [0x1d, 0x2b, 0x4f, 255] : [0, 0, 0, 0];
      if (dots.some(([dx, dy, r]) => Math.hypot(X - dx, Y - dy) <= r)) c = [0x9f, 0xb3, 0xe0, 255];
      const d = Math.hypot(X - 330, Y - 256);
      if (d <= 120) c = d >= 115 ? [0xff, 0xf4, 0xd8, 255] : [0xf2, 0xb4, 0x41, 255];
      px.set(c, y * (size * 4 + 1) + 1 + x * 4);
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td) >>> 0);
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0); ihdr.writeUInt32BE(size, 4); ihdr[8] = 8; ihdr[9] = 6; // 8-bit RGBA
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(px)), chunk('IEND', Buffer.alloc(0))]);
}
for (const size of [192, 512]) writeFileSync(join(pub, 'icons', `icon-${size}.png`), png(size));

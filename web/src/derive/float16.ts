// IEEE 754 half floats ↔ float32, as the trace file stores tensors (lib/tracefile.ts; Python's
// struct format 'e' writes the same bits). Pure: no DOM, checked by vitest.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
let table: Float32Array | null = null;

/** Every half float's value, once (256 kB): decoding is then one lookup per value. */
function halfTable(): Float32Array {
  if (table) return table;
  table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    table[h] =
      exp === 0 ? sign * mant * 2 ** -24 : exp === 31 ? (mant ? NaN : sign * Infinity) : sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return table;
}

/** One half float's bits → its value. */
export function halfToFloat(h: number): number {
  return halfTable()[h & 0xffff];
}

/** A value → the nearest half float's bits (ties to even; beyond ±65504 → ±inf; NaN stays NaN). */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: ±0
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rest > mid || (rest === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++; // a carry may round up into the exponent (or to inf): right
  return sign | half;
}

/** Little-endian half floats (the bytes of a trace file's member) → float32 values. */
export function decodeFloat16(bytes: Uint8Array): Float32Array {
  const n = bytes.length >> 1;
  const t = halfTable();
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = t[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  return out;
}

/** float32 values → little-endian half floats. */
export function encodeFloat16(values: Float32Array): Uint8Array {
  const out = new Uint8Array(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const h = floatToHalf(values[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

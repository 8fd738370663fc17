// Display statistics of the Trace's tensors: sizes and distances for labels and charts. None of
// these is a number the model computes; they describe what it computed.

/** ‖a‖₂. */
export function norm(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** ‖a − b‖₂ of two equally long arrays. */
export function normOfDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

/** The ‖·‖₂ of each row of a row-major rows × cols matrix (e.g. one text embedding per token position). */
export function rowNorms(m: ArrayLike<number>, rows: number, cols: number): number[] {
  return Array.from({ length: rows }, (_, r) => {
    let s = 0;
    for (let j = r * cols; j < (r + 1) * cols; j++) s += m[j] * m[j];
    return Math.sqrt(s);
  });
}

/** |a − b| element by element. */
export function absDifference(a: ArrayLike<number>, b: ArrayLike<number>): Float32Array {
  const d = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) d[i] = Math.abs(a[i] - b[i]);
  return d;
}

/** Mean |a − b| over the shorter length; `rgba`: skip every 4th value (an image's alpha). */
export function meanAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>, rgba = false): number {
  let s = 0;
  let n = 0;
  for (let k = 0; k < a.length && k < b.length; k++) {
    if (rgba && k % 4 === 3) continue;
    s += Math.abs(a[k] - b[k]);
    n++;
  }
  return n ? s / n : 0;
}

/** Element-wise sum of equally long arrays (e.g. one token's attention over the steps). */
export function sum(arrays: ArrayLike<number>[], length: number): Float32Array {
  const acc = new Float32Array(length);
  for (const a of arrays) for (let k = 0; k < length; k++) acc[k] += a[k];
  return acc;
}

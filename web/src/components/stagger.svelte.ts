// Drawing a replayed run one view at a time. A trace file arrives whole: without this, every view
// builds its DOM and paints its canvases in the one task that receives it (a long main-thread task at
// SD 1.5 size). A view that asks `staggered(() => key)` draws a new key after the first frame, in a
// task of its own (views in the order they asked); a null key draws at once (live runs are unchanged).
// While views wait, <html> carries `data-drawing` (tests wait for it to go).

const queue: (() => void)[] = [];
let pumping = false;

function pump() {
  queue.shift()?.();
  if (queue.length) setTimeout(pump, 0);
  else {
    pumping = false;
    delete document.documentElement.dataset.drawing;
  }
}

/** Run `fn` in a task of its own after the next frame; returns a cancel function. */
export function later(fn: () => void): () => void {
  queue.push(fn);
  if (!pumping) {
    pumping = true;
    document.documentElement.dataset.drawing = '';
    requestAnimationFrame(() => setTimeout(pump, 0));
  }
  return () => {
    const i = queue.indexOf(fn);
    if (i >= 0) queue.splice(i, 1);
  };
}

/** Whether a view may draw `key()` yet (call while the component initialises). */
export function staggered(key: () => unknown): { readonly ready: boolean } {
  let drawn = $state.raw<unknown>(null);
  $effect(() => {
    const k = key();
    if (k == null) return;
    return later(() => (drawn = k));
  });
  return {
    get ready() {
      const k = key();
      return k == null || drawn === k;
    },
  };
}

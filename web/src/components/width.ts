// An element's width for a chart, from one shared ResizeObserver. Svelte's `bind:clientWidth` also
// reads the width once as each element mounts, which forces a layout of the whole page there and
// then: with every view mounting on the first run, those reads cost a cold visit 0.4 s of the main
// thread. A ResizeObserver reports after the browser's own layout, all elements at once.

type Report = (width: number) => void;
const reports = new WeakMap<Element, Report>();
let observer: ResizeObserver | null = null;

function shared(): ResizeObserver {
  observer ??= new ResizeObserver((entries) => {
    for (const e of entries) reports.get(e.target)?.(Math.round(e.contentRect.width));
  });
  return observer;
}

/** `use:width={(w) => (measured = w)}`: the element's content width in CSS pixels, now and on every change. */
export function width(node: Element, report: Report) {
  reports.set(node, report);
  shared().observe(node);
  return {
    update(next: Report) {
      reports.set(node, next);
    },
    destroy() {
      reports.delete(node);
      observer?.unobserve(node);
    },
  };
}

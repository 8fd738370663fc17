// A D3 axis as a Svelte action: Svelte owns the <g>, D3 draws the ticks into it.
//   <g use:axis={axisLeft(y).ticks(4)} transform="translate({m.left},0)"></g>
import type { Axis, AxisDomain } from 'd3-axis';
import { select } from 'd3-selection';

export function axis<D extends AxisDomain>(g: SVGGElement, a: Axis<D>) {
  select(g).call(a);
  return { update: (next: Axis<D>) => void select(g).call(next) };
}

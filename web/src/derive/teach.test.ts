import { describe, expect, it } from 'vitest';
import type { TensorMsg } from '../lib/protocol';
import { promptEffect, teachingStep } from './teach';

const t = (data: number[]): TensorMsg => ({ dtype: 'float32', shape: [1, 1, 1, data.length], data: new Float32Array(data).buffer });
const step = (u: number[], c: number[]) => ({ noiseUncond: t(u), noiseCond: t(c) });

describe('teachingStep', () => {
  it('measures how much the prompt changes the prediction, relative to ε_u', () => {
    expect(promptEffect(step([3, 4], [3, 4]))).toBe(0);
    expect(promptEffect(step([3, 4], [6, 8]))).toBeCloseTo(1);
    expect(promptEffect(step([0, 0], [1, 1]))).toBe(0);
  });
  it('picks the largest effect in the first half, not the last step', () => {
    const steps = [
      step([1, 0], [1.1, 0]), // 0.1
      step([1, 0], [1.5, 0]), // 0.5  ← the first half's largest
      step([1, 0], [1.2, 0]), // 0.2
      step([1, 0], [1, 0]),
      step([1, 0], [9, 0]), // larger, but in the second half
    ];
    expect(teachingStep(steps)).toBe(1);
    // the first half of the planned steps, even when fewer arrived
    expect(teachingStep(steps.slice(0, 2), 26)).toBe(1);
    expect(teachingStep(steps, 2)).toBe(0);
    // only previewed steps (every 2nd: 0, 2, 4…), whose x̂₀ the run decoded
    expect(teachingStep(steps, 5, 2)).toBe(2);
  });
  it('has no step without steps; a tie keeps the earlier', () => {
    expect(teachingStep([])).toBeNull();
    expect(teachingStep([step([1], [2]), step([1], [2])])).toBe(0);
  });
});

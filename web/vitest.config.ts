import { defineConfig } from 'vitest/config';

// Unit tests of the pure modules (src/derive, src/text …): plain Node, no browser, no Svelte.
export default defineConfig({
  test: { include: ['src/**/*.test.ts'], environment: 'node' },
});

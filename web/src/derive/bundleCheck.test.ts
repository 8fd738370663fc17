import { describe, expect, it } from 'vitest';
import type { Manifest } from '../lib/bundleLoader';
import {
  WASM_LIMIT_BYTES,
  bundleAddress,
  folderProblem,
  folderRoot,
  manifestProblem,
  safeRelPath,
  wasmNeed,
  wasmProblem,
} from './bundleCheck';

const SHA = 'a'.repeat(64);
const GB = 1e9;

function manifest(files: Record<string, number>, comps: Record<string, { files: string[]; precision?: string }>, latent = 16): Manifest {
  return {
    format: 'diffusion-explainer-bundle',
    format_version: 1,
    model: { image_size: [latent * 8, latent * 8], latent_size: [latent, latent] },
    components: comps,
    files: Object.fromEntries(Object.entries(files).map(([k, bytes]) => [k, { bytes, sha256: SHA }])),
    scheduler: { default: 'ddim', config: {} },
  };
}

describe('bundleAddress', () => {
  const page = 'http://127.0.0.1:8000/?provider=wasm';
  it('takes http(s) folders and relative paths, and a manifest.json URL names its folder', () => {
    expect(bundleAddress('https://example.org/b', page)).toEqual({ url: 'https://example.org/b/' });
    expect(bundleAddress('/bundle/', page)).toEqual({ url: 'http://127.0.0.1:8000/bundle/' });
    expect(bundleAddress('http://x.org/m/manifest.json#a', page)).toEqual({ url: 'http://x.org/m/' });
  });
  it('refuses other schemes in one line', () => {
    const r = bundleAddress('javascript:alert(1)', page);
    expect('error' in r && r.error).toBe(
      'refusing the bundle address “javascript:alert(1)”: only http:// and https:// addresses can be opened (this one is javascript:)',
    );
    for (const bad of ['data:text/plain,x', 'file:///etc/', 'blob:http://x/1']) expect('error' in bundleAddress(bad, page)).toBe(true);
    expect('error' in bundleAddress('https://u:p@x.org/', page)).toBe(true);
    expect('error' in bundleAddress('  ', page)).toBe(true);
  });
});

describe('manifest paths', () => {
  it('safeRelPath keeps files inside the bundle', () => {
    for (const ok of ['unet.onnx', 'tokenizer/vocab.json', 'a/b/c.data']) expect(safeRelPath(ok)).toBe(true);
    for (const bad of ['../x', 'a/../../x', '/etc/passwd', 'C:/x', 'a\\b', 'a//b', './a', '', 'a\0b']) expect(safeRelPath(bad)).toBe(false);
  });
  it('manifestProblem names the file', () => {
    const good = manifest({ 'unet.onnx': 10 }, { unet: { files: ['unet.onnx'] } });
    expect(manifestProblem(good)).toBeNull();
    expect(manifestProblem(manifest({ '../unet.onnx': 10 }, {}))).toBe(
      'manifest.json names a file outside the bundle ("../unet.onnx"); refusing the bundle',
    );
    expect(manifestProblem(manifest({ 'a.onnx': 1 }, { unet: { files: ['/abs.onnx'] } }))).toContain('"/abs.onnx"');
    const badSha = manifest({ 'unet.onnx': 10 }, {});
    badSha.files['unet.onnx'].sha256 = 'xyz';
    expect(manifestProblem(badSha)).toBe('manifest.json gives unet.onnx no valid sha256; re-export the bundle');
  });
});

describe('WASM size rule', () => {
  // the three SD 1.5 builds measured in the page (README): all fail; the default small build runs
  const sd15 = (unet: number, te: number, vae: number, precision: string) =>
    manifest(
      { 'unet.onnx': unet, 'text_encoder.onnx': te, 'vae_decoder.onnx': vae },
      {
        unet: { files: ['unet.onnx'], precision },
        text_encoder: { files: ['text_encoder.onnx'], precision },
        vae_decoder: { files: ['vae_decoder.onnx'], precision },
      },
      64,
    );
  it('refuses SD 1.5 at 512 px in fp32, fp16 and int8 before downloading', () => {
    expect(wasmProblem(sd15(3.44 * GB, 0.49 * GB, 0.2 * GB, 'fp32'))).not.toBeNull();
    expect(wasmProblem(sd15(1.72 * GB, 0.25 * GB, 0.1 * GB, 'fp16'))).not.toBeNull();
    const int8 = wasmProblem(sd15(2.63 * GB, 0.237 * GB, 0.195 * GB, 'int8'));
    expect(int8).toMatch(/^unet\.onnx \(2\.63 GB\) and the rest of this model need about 5\.\d\d GB of WebAssembly memory/);
    expect(int8).toContain("more than WASM's 4 GB: nothing was downloaded");
  });
  it('accepts the default small build and counts attention from the latent size', () => {
    const small = manifest(
      { 'unet.onnx': 7.2e6, 'text_encoder.onnx': 8.2e6 },
      { unet: { files: ['unet.onnx'] }, text_encoder: { files: ['text_encoder.onnx'] } },
    );
    expect(wasmProblem(small)).toBeNull();
    const need = wasmNeed(sd15(1, 1, 1, 'fp32'));
    expect(need.attention).toBe(2 * 2 * 8 * 4096 ** 2 * 4); // 2.1 GB at 64×64 latents
    expect(wasmNeed(sd15(2e9, 0, 0, 'fp16')).widened).toBe(4e9);
    expect(WASM_LIMIT_BYTES).toBe(2 ** 32);
  });
});

describe('folders', () => {
  const files = [
    { path: 'b/manifest.json', size: 10 },
    { path: 'b/unet.onnx', size: 10 },
    { path: 'b/tokenizer/vocab.json', size: 3 },
    { path: 'b/nested/manifest.json', size: 1 },
  ];
  it('finds the shallowest manifest and checks presence and sizes', () => {
    expect(folderRoot(files)).toEqual({ manifest: 'b/manifest.json', prefix: 'b/' });
    expect(folderRoot([{ path: 'x/y.txt', size: 1 }])).toBeNull();
    const m = manifest({ 'unet.onnx': 10, 'tokenizer/vocab.json': 3 }, {});
    expect(folderProblem(m, files, 'b/')).toBeNull();
    expect(folderProblem(manifest({ 'unet.onnx': 11 }, {}), files, 'b/')).toBe(
      'unet.onnx in the folder has 10 bytes, the manifest says 11; the folder is damaged — export it again',
    );
    expect(folderProblem(manifest({ 'vae.onnx': 1 }, {}), files, 'b/')).toBe(
      'vae.onnx is missing from the folder; export the bundle again or pick the whole folder',
    );
  });
});

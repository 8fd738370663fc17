// The bundles this browser keeps (Cache API, lib/bundleLoader.ts) as a reactive list, and a local
// folder (picked or dropped) as the files the engine worker checks: paths inside the bundle.
import { folderRoot } from '../derive/bundleCheck';
import { listCachedBundles, removeCachedBundle, type CachedBundle } from '../lib/bundleLoader';

export class CachedBundles {
  list = $state.raw<CachedBundle[]>([]);
  error = $state<string | null>(null);

  async refresh() {
    try {
      this.list = await listCachedBundles();
      this.error = null;
    } catch (e) {
      this.error = `the browser's storage could not be read (${(e as Error).message})`;
    }
  }

  async remove(fingerprint: string) {
    try {
      await removeCachedBundle(fingerprint);
    } catch (e) {
      this.error = `could not remove the bundle (${(e as Error).message})`;
    }
    await this.refresh();
  }
}

export type FolderFiles = { path: string; file: File }[];

/** A picked folder (<input webkitdirectory>) or dropped files → the bundle's files by their path
 * inside it (the folder holding the shallowest manifest.json), or one line why not. */
export function bundleFolder(files: { path: string; file: File }[]): { folder: FolderFiles } | { error: string } {
  const root = folderRoot(files.map((f) => ({ path: f.path, size: f.file.size })));
  if (!root) return { error: 'the folder has no manifest.json: pick the folder that `diffusion-explainer export` wrote' };
  const folder = files.filter((f) => f.path.startsWith(root.prefix)).map((f) => ({ path: f.path.slice(root.prefix.length), file: f.file }));
  return { folder };
}

/** The files of an <input type=file webkitdirectory>. */
export function pickedFiles(list: FileList): { path: string; file: File }[] {
  return Array.from(list, (file) => ({ path: file.webkitRelativePath || file.name, file }));
}

/** The files of a drop (a folder dragged in; its sub-folders read recursively). */
export async function droppedFiles(data: DataTransfer): Promise<{ path: string; file: File }[]> {
  const entries = Array.from(data.items)
    .map((item) => item.webkitGetAsEntry?.())
    .filter((e): e is FileSystemEntry => !!e);
  if (!entries.length) return Array.from(data.files, (file) => ({ path: file.name, file }));
  const out: { path: string; file: File }[] = [];
  const walk = async (entry: FileSystemEntry, prefix: string): Promise<void> => {
    if (entry.isFile) {
      const file = await new Promise<File>((resolve, reject) => (entry as FileSystemFileEntry).file(resolve, reject));
      out.push({ path: prefix + entry.name, file });
    } else if (entry.isDirectory) {
      const reader = (entry as FileSystemDirectoryEntry).createReader();
      for (;;) {
        // readEntries gives at most ~100 entries a call: read until it gives none
        const batch = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, '');
  return out;
}

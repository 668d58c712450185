// `.tuna-pull.json` in a pulled directory: what each file was verified to be, so a second pull can skip it
// after a stat (size and mtime unchanged) instead of re-hashing gigabytes.
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

export const MANIFEST = ".tuna-pull.json";

const Entry = z.object({
  size: z.number().int().nonnegative(),
  sha256: z.string(),
  git_sha1: z.string().optional(),
  mtime_ms: z.number(),
});
export type ManifestEntry = z.infer<typeof Entry>;

const Manifest = z.object({
  version: z.literal(1),
  hub: z.string(),
  endpoint: z.string(),
  repo: z.string(),
  revision: z.string(),
  commit: z.string().nullable(),
  files: z.record(z.string(), Entry),
});
export type Manifest = z.infer<typeof Manifest>;

/** The manifest of `dir`, or null when there is none or it cannot be read (then files are re-hashed). */
export function readManifest(dir: string): Manifest | null {
  const p = join(dir, MANIFEST);
  if (!existsSync(p)) return null;
  try {
    const r = Manifest.safeParse(JSON.parse(readFileSync(p, "utf8")));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

export function writeManifest(dir: string, m: Manifest): void {
  const p = join(dir, MANIFEST);
  writeFileSync(`${p}.tmp`, `${JSON.stringify(m, null, 2)}\n`);
  renameSync(`${p}.tmp`, p);
}

// `tuna model pull`: list a repository at a revision, choose the files a fine-tune needs, skip those already
// verified on disk, download the rest (a few at a time, resumable, checked), and record them in the manifest.
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { TunaError } from "../errors.ts";
import { downloadFile, hashFile } from "./download.ts";
import type { RetryOptions } from "./http.ts";
import { HF_DEFAULT_ENDPOINT, HuggingFace } from "./huggingface.ts";
import { type Manifest, readManifest, writeManifest } from "./manifest.ts";
import { ModelScope, MS_DEFAULT_ENDPOINT } from "./modelscope.ts";
import { DownloadProgress, formatBytes } from "./progress.ts";
import { selectFiles } from "./select.ts";
import type { HubClient, HubName, RemoteFile } from "./types.ts";

export interface PullOptions {
  repo: string;
  hub?: HubName;
  /** Branch, tag or commit; default "main" on Hugging Face, "master" on ModelScope. */
  revision?: string;
  /** Hub address; default from HF_ENDPOINT / MODELSCOPE_ENDPOINT, else the public hub. */
  endpoint?: string;
  /** Access token; default from HF_TOKEN / MODELSCOPE_API_TOKEN. */
  token?: string;
  /** Target directory; default models/<repo>. */
  dir?: string;
  /** Extra globs to download besides the default set (e.g. "*.bin"). */
  include?: string[];
  /** Files downloaded at once. */
  jobs?: number;
  retries?: number;
  backoffMs?: number;
  stallMs?: number;
  /** Where progress goes (stderr). */
  out?: NodeJS.WriteStream;
  env?: NodeJS.ProcessEnv;
}

export interface PulledFile {
  path: string;
  size: number;
  status: "downloaded" | "present";
  /** Bytes fetched over the network for this file in this pull. */
  fetched: number;
}

export interface PullResult {
  dir: string;
  hub: HubName;
  endpoint: string;
  repo: string;
  revision: string;
  commit: string | null;
  files: PulledFile[];
  fetchedBytes: number;
  skippedWeights: string[];
  warnings: string[];
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)?$/;

export function makeClient(o: PullOptions): HubClient {
  const env = o.env ?? process.env;
  const hub = o.hub ?? "huggingface";
  if (!REPO_ID.test(o.repo) || o.repo.includes("..")) {
    throw new TunaError("BAD_OPTION", `"${o.repo}" is not a repository id`, {
      hint: "give owner/name as on the hub, e.g. Qwen/Qwen3-0.6B",
    });
  }
  const http = {
    retries: o.retries ?? 5,
    backoffMs: o.backoffMs ?? 1000,
    stallMs: o.stallMs ?? 60_000,
  };
  const endpoint = (e: string | undefined, fallback: string) => {
    const v = e || fallback;
    let u: URL;
    try {
      u = new URL(v);
    } catch {
      throw new TunaError("BAD_OPTION", `endpoint "${v}" is not a URL`, {
        hint: "e.g. https://hf-mirror.com",
      });
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new TunaError("BAD_OPTION", `endpoint "${v}" is not an http(s) URL`, {
        hint: "e.g. https://hf-mirror.com",
      });
    }
    return v.replace(/\/+$/, "");
  };
  if (hub === "huggingface") {
    return new HuggingFace({
      endpoint: endpoint(o.endpoint ?? env.HF_ENDPOINT, HF_DEFAULT_ENDPOINT),
      repo: o.repo,
      revision: o.revision ?? "main",
      token: o.token ?? (env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined),
      http,
    });
  }
  if (hub === "modelscope") {
    const domain = env.MODELSCOPE_DOMAIN ? `https://${env.MODELSCOPE_DOMAIN}` : undefined;
    return new ModelScope({
      endpoint: endpoint(o.endpoint ?? env.MODELSCOPE_ENDPOINT ?? domain, MS_DEFAULT_ENDPOINT),
      repo: o.repo,
      revision: o.revision ?? "master",
      token: o.token ?? (env.MODELSCOPE_API_TOKEN || undefined),
      http,
    });
  }
  throw new TunaError("BAD_OPTION", `--hub "${hub as string}" is not one of huggingface, modelscope`);
}

export async function pullModel(o: PullOptions): Promise<PullResult> {
  const client = makeClient(o);
  const out = o.out ?? process.stderr;
  const dir = resolve(o.dir ?? join("models", o.repo));
  const what = `${client.repo}@${client.revision}`;
  const http: RetryOptions & { stallMs: number } = {
    retries: o.retries ?? 5,
    backoffMs: o.backoffMs ?? 1000,
    stallMs: o.stallMs ?? 60_000,
    onRetry: (n, wait, e) => out.write(`  retry ${n} in ${(wait / 1000).toFixed(1)}s: ${e.message}\n`),
  };

  const listing = await client.list();
  const { files, skippedWeights } = selectFiles(listing.files, o.include ?? [], what);
  const warnings: string[] = [];
  if (skippedWeights.length > 0) {
    warnings.push(
      `not downloaded (Tuna loads safetensors; --include '<glob>' to get them): ${skippedWeights.slice(0, 5).join(", ")}${skippedWeights.length > 5 ? `, and ${skippedWeights.length - 5} more` : ""}`,
    );
  }
  for (const need of ["config.json", "tokenizer.json"]) {
    if (!files.some((f) => f.path === need)) warnings.push(`${what} has no ${need}; Tuna needs it to train`);
  }

  mkdirSync(dir, { recursive: true });
  const old = readManifest(dir);
  const manifest: Manifest = {
    version: 1,
    hub: client.hub,
    endpoint: client.endpoint,
    repo: client.repo,
    revision: client.revision,
    commit: listing.commit,
    files: {},
  };
  // Keep what an earlier pull verified for files this pull also wants (entries for other files are dropped).
  const result: PulledFile[] = [];
  const todo: RemoteFile[] = [];
  for (const f of files) {
    const present = await verifiedLocal(dir, f, old, listing.commit);
    if (present) {
      manifest.files[f.path] = present;
      result.push({ path: f.path, size: present.size, status: "present", fetched: 0 });
    } else todo.push(f);
  }
  writeManifest(dir, manifest);

  const total = todo.reduce((a, f) => a + (f.size ?? 0), 0);
  const progress = new DownloadProgress(total, todo.length, out);
  if (todo.length > 0) {
    progress.say(
      `pulling ${what} from ${client.endpoint}${listing.commit ? ` (commit ${listing.commit.slice(0, 10)})` : ""}: ${todo.length} file(s), ${formatBytes(total)}${result.length ? `; ${result.length} already here` : ""}`,
    );
  }
  let firstError: unknown = null;
  const queue = [...todo];
  const worker = async () => {
    for (let f = queue.shift(); f && !firstError; f = queue.shift()) {
      try {
        const d = await downloadFile({
          client,
          url: client.fileUrl(f.path, listing.commit),
          file: f,
          dest: join(dir, f.path),
          http,
          onBytes: (n) => progress.bytes(n),
        });
        const st = statSync(join(dir, f.path));
        manifest.files[f.path] = {
          size: d.size,
          sha256: d.sha256,
          git_sha1: d.gitSha1,
          mtime_ms: st.mtimeMs,
        };
        writeManifest(dir, manifest);
        result.push({ path: f.path, size: d.size, status: "downloaded", fetched: d.fetched });
        progress.fileDone(f.path, d.size, d.fetched);
      } catch (e) {
        firstError ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.jobs ?? 4, todo.length)) }, worker));
  progress.end();
  if (firstError) throw firstError;

  checkShards(dir, files);
  result.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return {
    dir,
    hub: client.hub,
    endpoint: client.endpoint,
    repo: client.repo,
    revision: client.revision,
    commit: listing.commit,
    files: result,
    fetchedBytes: result.reduce((a, f) => a + f.fetched, 0),
    skippedWeights,
    warnings,
  };
}

/**
 * The manifest entry for a local file that matches the remote one, or null when it must be downloaded. A file
 * whose size and mtime are those recorded is trusted without hashing; one without a record is hashed.
 */
async function verifiedLocal(dir: string, f: RemoteFile, old: Manifest | null, commit: string | null) {
  const p = join(dir, f.path);
  if (!existsSync(p)) return null;
  const st = statSync(p);
  if (!st.isFile() || (f.size !== null && st.size !== f.size)) return null;
  const e = old?.files[f.path];
  const agrees = (sha256: string, gitSha1?: string) =>
    (!f.sha256 || f.sha256 === sha256) && (!f.gitSha1 || f.gitSha1 === gitSha1);
  if (e && e.size === st.size && e.mtime_ms === st.mtimeMs && agrees(e.sha256, e.git_sha1)) {
    // Without any hash or size from the hub, only the same commit proves the file is unchanged.
    if (f.sha256 || f.gitSha1 || f.size !== null || (commit !== null && old?.commit === commit)) return e;
  }
  if (!f.sha256 && !f.gitSha1) return null;
  const h = await hashFile(p, f.size);
  if (!agrees(h.sha256, h.gitSha1)) return null;
  return {
    size: h.size,
    sha256: h.sha256,
    git_sha1: f.gitSha1 ? h.gitSha1 : undefined,
    mtime_ms: st.mtimeMs,
  };
}

/** A sharded checkpoint must come with every shard its index names. */
function checkShards(dir: string, files: RemoteFile[]): void {
  const index = files.find((f) => f.path === "model.safetensors.index.json");
  if (!index) return;
  let map: Record<string, string>;
  try {
    map = (JSON.parse(readFileSync(join(dir, index.path), "utf8")) as { weight_map: Record<string, string> })
      .weight_map;
  } catch (e) {
    throw new TunaError(
      "HUB_BAD_INDEX",
      `model.safetensors.index.json is not valid JSON: ${(e as Error).message}`,
      {
        where: join(dir, index.path),
      },
    );
  }
  const missing = [...new Set(Object.values(map ?? {}))].filter((s) => !existsSync(join(dir, s)));
  if (missing.length > 0) {
    throw new TunaError(
      "HUB_INCOMPLETE",
      `model.safetensors.index.json names shard(s) the repository does not have: ${missing.join(", ")}`,
      { where: join(dir, index.path), hint: "the upload is incomplete; try another --revision" },
    );
  }
}

// Hugging Face Hub (and mirrors with the same API, such as hf-mirror.com).
//   list:     GET /api/models/{repo}/revision/{rev}?blobs=true  → sha (commit), siblings [{rfilename, size, blobId, lfs}]
//             GET /api/models/{repo}/tree/{rev}?recursive=true  → [{type, path, size, oid, lfs: {oid, size}}], paged
//             by a `Link: <...>; rel="next"` header (used where siblings come without sizes, as on some mirrors)
//   download: GET /{repo}/resolve/{rev}/{path}: small files directly (ETag = git blob id), LFS files by a redirect
//             to a CDN (X-Linked-Etag = sha256, X-Linked-Size); X-Repo-Commit names the commit.
//   errors:   X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo, X-Error-Message.
import { z } from "zod";
import { TunaError } from "../errors.ts";
import { getJson, type RetryOptions } from "./http.ts";
import type { HubClient, HubFileHeaders, Listing, RemoteFile } from "./types.ts";

export const HF_DEFAULT_ENDPOINT = "https://huggingface.co";

const Sibling = z.object({
  rfilename: z.string(),
  size: z.number().int().nonnegative().optional(),
  blobId: z.string().optional(),
  lfs: z.object({ sha256: z.string(), size: z.number().int().nonnegative() }).partial().nullish(),
});
const ModelInfo = z.object({ sha: z.string().nullish(), siblings: z.array(Sibling).default([]) }).loose();
const TreeEntry = z.object({
  type: z.string(),
  path: z.string(),
  size: z.number().int().nonnegative().optional(),
  oid: z.string().optional(),
  lfs: z.object({ oid: z.string(), size: z.number().int().nonnegative() }).partial().nullish(),
});
const Tree = z.array(TreeEntry);

const SHA256 = /^[0-9a-f]{64}$/;
const SHA1 = /^[0-9a-f]{40}$/;

export interface HfOptions {
  endpoint: string;
  repo: string;
  revision: string;
  token?: string;
  http: RetryOptions & { stallMs: number };
}

/** `a/b/c d` → `a/b/c%20d`: each path segment encoded, slashes kept. */
export function encodePath(p: string): string {
  return p.split("/").map(encodeURIComponent).join("/");
}

export class HuggingFace implements HubClient {
  readonly hub = "huggingface" as const;
  readonly endpoint: string;
  readonly repo: string;
  readonly revision: string;
  private readonly token?: string;
  private readonly http: HfOptions["http"];

  constructor(o: HfOptions) {
    this.endpoint = o.endpoint.replace(/\/+$/, "");
    this.repo = o.repo;
    this.revision = o.revision;
    this.token = o.token;
    this.http = o.http;
  }

  headers(): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  }

  private get what(): string {
    return `${this.repo}@${this.revision} on ${this.endpoint}`;
  }

  async list(): Promise<Listing> {
    // A revision may contain "/" (refs/pr/1): it is one path segment in the API.
    const rev = encodeURIComponent(this.revision);
    const infoUrl = `${this.endpoint}/api/models/${encodePath(this.repo)}/revision/${rev}?blobs=true`;
    const { json } = await getJson(infoUrl, this.headers(), this.http, (s, h, b) =>
      this.httpError(s, h, b, infoUrl),
    );
    const info = parse(ModelInfo, json, infoUrl);
    const commit = info.sha && SHA1.test(info.sha) ? info.sha : null;
    let files: RemoteFile[] = info.siblings.map((s) => ({
      path: s.rfilename,
      size: s.lfs?.size ?? s.size ?? null,
      sha256: s.lfs?.sha256 && SHA256.test(s.lfs.sha256) ? s.lfs.sha256 : undefined,
      gitSha1: !s.lfs && s.blobId && SHA1.test(s.blobId) ? s.blobId : undefined,
    }));
    if (files.some((f) => f.size === null)) {
      // Mirrors that ignore ?blobs=true give bare names; the tree API has sizes and LFS hashes.
      const tree = await this.tree(commit ?? this.revision);
      const byPath = new Map(tree.map((f) => [f.path, f]));
      files = files.map((f) => byPath.get(f.path) ?? f);
    }
    return { commit, files };
  }

  private async tree(rev: string): Promise<RemoteFile[]> {
    let url: string | null =
      `${this.endpoint}/api/models/${encodePath(this.repo)}/tree/${encodeURIComponent(rev)}?recursive=true`;
    const out: RemoteFile[] = [];
    for (let page = 0; url && page < 1000; page++) {
      const pageUrl: string = url;
      const { json, headers } = await getJson(pageUrl, this.headers(), this.http, (s, h, b) =>
        this.httpError(s, h, b, pageUrl),
      );
      for (const e of parse(Tree, json, pageUrl)) {
        if (e.type !== "file") continue;
        out.push({
          path: e.path,
          size: e.lfs?.size ?? e.size ?? null,
          sha256: e.lfs?.oid && SHA256.test(e.lfs.oid) ? e.lfs.oid : undefined,
          gitSha1: !e.lfs && e.oid && SHA1.test(e.oid) ? e.oid : undefined,
        });
      }
      const next = /<([^>]+)>;\s*rel="next"/.exec(headers.get("link") ?? "");
      url = next ? new URL(next[1], pageUrl).toString() : null;
    }
    return out;
  }

  fileUrl(path: string, commit: string | null): string {
    return `${this.endpoint}/${encodePath(this.repo)}/resolve/${encodeURIComponent(commit ?? this.revision)}/${encodePath(path)}`;
  }

  hashesFromHeaders(h: HubFileHeaders): { sha256?: string; gitSha1?: string } {
    // LFS: the hub's redirect carries X-Linked-Etag = sha256. Regular file: the ETag is the git blob id.
    if (h.linkedEtag && SHA256.test(h.linkedEtag)) return { sha256: h.linkedEtag };
    if (h.status === 200 && h.etag && SHA1.test(h.etag)) return { gitSha1: h.etag };
    if (h.status === 200 && h.etag && SHA256.test(h.etag)) return { sha256: h.etag };
    return {};
  }

  httpError(status: number, headers: Headers, body: string, url: string, file?: string): Error {
    const code = headers.get("x-error-code");
    const serverSays = headers.get("x-error-message") ?? jsonError(body);
    const said = serverSays ? ` (the hub says: ${serverSays})` : "";
    const page = `${this.endpoint}/${this.repo}`;
    const tokenHint = this.token
      ? "a token was sent: check it is valid and belongs to an account with access"
      : "pass --token <token> or set HF_TOKEN";
    if (code === "GatedRepo") {
      return new TunaError("HUB_GATED", `${this.repo} is a gated model: HTTP ${status}${said}`, {
        hint: `accept the licence at ${page} while logged in, then ${this.token ? "use a token of that account" : "pass --token <token> or set HF_TOKEN"}`,
        where: url,
      });
    }
    if (code === "RevisionNotFound") {
      return new TunaError("HUB_NOT_FOUND", `revision "${this.revision}" not found in ${this.repo}${said}`, {
        hint: `see the branches and tags at ${page}; --revision takes a branch, tag or commit id`,
        where: url,
      });
    }
    if (code === "EntryNotFound" || (status === 404 && file && !code)) {
      return new TunaError("HUB_NOT_FOUND", `file ${file ?? "?"} not found in ${this.what}${said}`, {
        where: url,
      });
    }
    if (code === "RepoNotFound" || status === 404) {
      return new TunaError(
        "HUB_NOT_FOUND",
        `repository ${this.repo} not found on ${this.endpoint} (HTTP ${status})${said}`,
        {
          hint: `check the name (owner/name, as in ${page}); a private repository needs a token: ${tokenHint}`,
          where: url,
        },
      );
    }
    if (status === 401 || status === 403) {
      return new TunaError("HUB_AUTH", `${this.what}: access denied (HTTP ${status})${said}`, {
        hint: `${tokenHint}; a gated model also needs its licence accepted at ${page}`,
        where: url,
      });
    }
    return new TunaError("HUB_HTTP", `${this.what}: HTTP ${status}${said}`, { where: url });
  }
}

function jsonError(body: string): string | null {
  try {
    const j = JSON.parse(body) as { error?: unknown };
    return typeof j.error === "string" ? j.error : null;
  } catch {
    return null;
  }
}

export function parse<T>(schema: z.ZodType<T>, value: unknown, url: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  throw new TunaError(
    "HUB_BAD_RESPONSE",
    `unexpected answer: field ${issue.path.join(".") || "(top level)"}: ${issue.message}`,
    { where: url, hint: "check that --endpoint / --hub name the right kind of hub" },
  );
}

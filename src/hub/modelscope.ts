// ModelScope (www.modelscope.cn), the hub many teams in China pull Qwen from.
//   login:    POST /api/v1/login {"AccessToken": token} → session cookies (what the modelscope SDK's login does)
//   list:     GET /api/v1/models/{owner}/{name}/repo/files?Revision={rev}&Recursive=true
//             → {Code: 200, Success: true, Data: {Files: [{Name, Path, Type: "blob"|"tree", Size, Sha256, IsLFS}]}}
//   download: GET /api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path} (may redirect to storage)
// The default revision is "master".
import { z } from "zod";
import { TunaError } from "../errors.ts";
import { getJson, type RetryOptions, request } from "./http.ts";
import { encodePath, parse } from "./huggingface.ts";
import type { HubClient, HubFileHeaders, Listing } from "./types.ts";

export const MS_DEFAULT_ENDPOINT = "https://www.modelscope.cn";

const MsFile = z
  .object({
    Path: z.string(),
    Name: z.string().optional(),
    Type: z.string(),
    Size: z.number().int().nonnegative().nullish(),
    Sha256: z.string().nullish(),
  })
  .loose();
const MsFiles = z
  .object({
    Code: z.number().optional(),
    Success: z.boolean().optional(),
    Message: z.string().nullish(),
    Data: z
      .object({ Files: z.array(MsFile).nullish() })
      .loose()
      .nullish(),
  })
  .loose();

export interface MsOptions {
  endpoint: string;
  repo: string;
  revision: string;
  token?: string;
  http: RetryOptions & { stallMs: number };
}

export class ModelScope implements HubClient {
  readonly hub = "modelscope" as const;
  readonly endpoint: string;
  readonly repo: string;
  readonly revision: string;
  private readonly token?: string;
  private readonly http: MsOptions["http"];
  private cookie: string | null = null;

  constructor(o: MsOptions) {
    this.endpoint = o.endpoint.replace(/\/+$/, "");
    if (!/^[^/]+\/[^/]+$/.test(o.repo)) {
      throw new TunaError("BAD_OPTION", `ModelScope model ids are owner/name; given "${o.repo}"`, {
        hint: "e.g. Qwen/Qwen3-0.6B",
      });
    }
    this.repo = o.repo;
    this.revision = o.revision;
    this.token = o.token;
    this.http = o.http;
  }

  headers(): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.token) h.authorization = `Bearer ${this.token}`;
    if (this.cookie) h.cookie = this.cookie;
    return h;
  }

  /** Trade the access token for session cookies, as the modelscope SDK's `HubApi().login(token)` does. */
  private async login(): Promise<void> {
    if (!this.token || this.cookie !== null) return;
    const url = `${this.endpoint}/api/v1/login`;
    const { res, stall } = await request(url, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ AccessToken: this.token }),
      stallMs: this.http.stallMs,
    });
    try {
      const text = await res.text();
      if (!res.ok) {
        throw new TunaError(
          "HUB_AUTH",
          `ModelScope refused the access token (HTTP ${res.status}): ${msMessage(text) ?? text.slice(0, 120)}`,
          {
            where: url,
            hint: "get a valid SDK token at https://www.modelscope.cn/my/myaccesstoken and pass it with --token or MODELSCOPE_API_TOKEN",
          },
        );
      }
      this.cookie = res.headers
        .getSetCookie()
        .map((c) => c.split(";")[0])
        .join("; ");
    } finally {
      stall.done();
    }
  }

  async list(): Promise<Listing> {
    await this.login();
    const q = new URLSearchParams({ Revision: this.revision, Recursive: "true" });
    const url = `${this.endpoint}/api/v1/models/${encodePath(this.repo)}/repo/files?${q}`;
    const { json } = await getJson(url, this.headers(), this.http, (s, h, b) => this.httpError(s, h, b, url));
    const body = parse(MsFiles, json, url);
    if (body.Success === false || (body.Code !== undefined && body.Code !== 200) || !body.Data?.Files) {
      throw this.apiError(body.Code, body.Message ?? null, url);
    }
    const files = body.Data.Files.filter(
      (f) => f.Type !== "tree" && f.Path !== ".gitattributes" && f.Path !== ".gitignore",
    ).map((f) => ({
      path: f.Path,
      size: f.Size ?? null,
      sha256: f.Sha256 && /^[0-9a-f]{64}$/.test(f.Sha256) ? f.Sha256 : undefined,
    }));
    return { commit: null, files };
  }

  fileUrl(path: string, _commit: string | null): string {
    const q = new URLSearchParams({ Revision: this.revision, FilePath: path });
    return `${this.endpoint}/api/v1/models/${encodePath(this.repo)}/repo?${q}`;
  }

  hashesFromHeaders(_h: HubFileHeaders): { sha256?: string; gitSha1?: string } {
    return {}; // the listing carries the hashes; ETags here are storage ETags, not content hashes
  }

  private apiError(code: number | undefined, message: string | null, url: string): Error {
    const said = message ? `: ${message}` : "";
    if (message && /not (exist|found)|不存在|找不到/i.test(message)) {
      return new TunaError(
        "HUB_NOT_FOUND",
        `${this.repo} at revision "${this.revision}" not found on ModelScope (${this.endpoint})${said}`,
        { where: url, hint: `check the model id and revision at ${this.endpoint}/models/${this.repo}` },
      );
    }
    return new TunaError("HUB_HTTP", `ModelScope answered code ${code ?? "?"} for ${this.repo}${said}`, {
      where: url,
    });
  }

  httpError(status: number, _headers: Headers, body: string, url: string, file?: string): Error {
    const message = msMessage(body);
    const said = message ? ` (ModelScope says: ${message})` : "";
    const page = `${this.endpoint}/models/${this.repo}`;
    if (status === 404) {
      const what = file
        ? `file ${file} in ${this.repo}@${this.revision}`
        : `${this.repo} at revision "${this.revision}"`;
      return new TunaError(
        "HUB_NOT_FOUND",
        `${what} not found on ModelScope (${this.endpoint}), HTTP 404${said}`,
        {
          where: url,
          hint: `check the model id and revision at ${page} (ModelScope's default branch is "master")`,
        },
      );
    }
    if (status === 401 || status === 403) {
      return new TunaError("HUB_AUTH", `${this.repo}: access denied by ModelScope (HTTP ${status})${said}`, {
        where: url,
        hint: this.token
          ? `the token was sent: check it is valid and that its account may access ${page} (some models need an application approved)`
          : `a private or gated model needs a token: pass --token <token> or set MODELSCOPE_API_TOKEN, and request access at ${page}`,
      });
    }
    return new TunaError("HUB_HTTP", `${this.repo}: HTTP ${status} from ModelScope${said}`, { where: url });
  }
}

function msMessage(body: string): string | null {
  try {
    const j = JSON.parse(body) as { Message?: unknown; message?: unknown };
    const m = j.Message ?? j.message;
    return typeof m === "string" && m ? m : null;
  } catch {
    return null;
  }
}

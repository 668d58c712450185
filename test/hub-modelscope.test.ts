// `tuna model pull --hub modelscope` against a fake ModelScope on loopback: its file-list API and JSON
// envelope, the repo?FilePath= download URL (LFS files redirected to storage), token login, errors.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TunaError } from "../src/errors.ts";
import { MANIFEST, pullModel } from "../src/hub/index.ts";
import { COMMIT, NEEDED, sink, tinyFiles, tuna } from "./fixtures/hub/helpers.ts";
import { type FakeRepo, type HubServer, sha256, startHubServer } from "./fixtures/hub/server.ts";

const files = tinyFiles();
const data = (p: string) => files.find((f) => f.path === p)!.data;
const repos: FakeRepo[] = [
  // ModelScope gives no Sha256 for some files: those are checked by size.
  { id: "Qwen/Tiny", commit: COMMIT, files, noSha: ["generation_config.json"] },
  { id: "acme/private", commit: COMMIT, files, token: "ms-token-1" },
];

let ms: HubServer;
const tmp = mkdtempSync(join(tmpdir(), "tuna-hub-ms-"));
let n = 0;
const newDir = () => join(tmp, `m${n++}`);

beforeAll(async () => {
  ms = await startHubServer({ layout: "modelscope", repos });
});
afterAll(async () => {
  await ms?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function pull(repo: string, dir: string, extra: Partial<Parameters<typeof pullModel>[0]> = {}) {
  const s = sink();
  const r = await pullModel({
    repo,
    dir,
    hub: "modelscope",
    endpoint: ms.url,
    out: s.out,
    retries: 3,
    backoffMs: 5,
    env: {},
    ...extra,
  });
  return { ...r, stderr: s.text() };
}
async function pullError(repo: string, dir: string, extra: Partial<Parameters<typeof pullModel>[0]> = {}) {
  try {
    await pull(repo, dir, extra);
  } catch (e) {
    expect(e).toBeInstanceOf(TunaError);
    return e as TunaError;
  }
  throw new Error("pull did not fail");
}

describe("tuna model pull (ModelScope layout)", () => {
  it("CLI: lists with repo/files, downloads with repo?FilePath=, only the needed files; second pull fetches nothing", async () => {
    const dir = newDir();
    const i = ms.log.length;
    const r = await tuna([
      "model",
      "pull",
      "Qwen/Tiny",
      "--hub",
      "modelscope",
      "--endpoint",
      ms.url,
      "--dir",
      dir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`Qwen/Tiny@master from ${ms.url}: 7 file(s), 7 downloaded`);
    for (const p of NEEDED) expect(readFileSync(join(dir, p)).equals(data(p))).toBe(true);
    expect(readdirSync(dir).sort()).toEqual([MANIFEST, ...NEEDED].sort());
    const log = ms.log.slice(i);
    expect(log[0].url).toBe("/api/v1/models/Qwen/Tiny/repo/files?Revision=master&Recursive=true");
    const hubGets = log.filter((l) => l.server === "hub" && l.file);
    expect(hubGets.map((l) => l.file).sort()).toEqual(NEEDED);
    expect(hubGets.find((l) => l.file === "config.json")!.url).toBe(
      "/api/v1/models/Qwen/Tiny/repo?Revision=master&FilePath=config.json",
    );
    // LFS files were redirected to storage.
    expect(
      log
        .filter((l) => l.server === "cdn")
        .map((l) => l.file)
        .sort(),
    ).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"]);

    const j = ms.log.length;
    const again = await tuna(["model", "pull", "Qwen/Tiny", "--hub", "modelscope", "--dir", dir], {
      MODELSCOPE_ENDPOINT: ms.url,
    });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("0 downloaded (0 B), 7 already present and verified");
    expect(ms.log.slice(j).filter((l) => l.file)).toEqual([]);
  });

  it("a private model: the token is traded for a session cookie at /api/v1/login; the cookie stays on the hub", async () => {
    const no = await pullError("acme/private", newDir());
    expect(no.code).toBe("HUB_AUTH");
    expect(no.message).toContain("acme/private: access denied by ModelScope (HTTP 401)");
    expect(no.message).toContain("please log in");
    expect(no.hint).toContain("MODELSCOPE_API_TOKEN");

    const bad = await pullError("acme/private", newDir(), { token: "nope" });
    expect(bad.code).toBe("HUB_AUTH");
    expect(bad.message).toContain("ModelScope refused the access token (HTTP 401): access token is invalid");

    const i = ms.log.length;
    const dir = newDir();
    const r = await pull("acme/private", dir, { env: { MODELSCOPE_API_TOKEN: "ms-token-1" } });
    expect(r.files.map((f) => f.path)).toEqual(NEEDED);
    const log = ms.log.slice(i);
    expect(log[0].url).toBe("/api/v1/login");
    const hub = log.slice(1).filter((l) => l.server === "hub");
    expect(hub.every((l) => l.cookie === "m_session_id=sess-7f3a; acw_tc=abc")).toBe(true);
    const cdn = log.filter((l) => l.server === "cdn");
    expect(cdn.length).toBe(3);
    expect(cdn.every((l) => l.cookie === undefined && l.auth === undefined)).toBe(true);
  });

  it("404s name the model and the revision", async () => {
    const repo = await pullError("acme/none", newDir());
    expect(repo.code).toBe("HUB_NOT_FOUND");
    expect(repo.message).toContain('acme/none at revision "master" not found on ModelScope');
    expect(repo.message).toContain("model acme/none not exists");
    const rev = await pullError("Qwen/Tiny", newDir(), { revision: "v2.0" });
    expect(rev.code).toBe("HUB_NOT_FOUND");
    expect(rev.message).toContain('Qwen/Tiny at revision "v2.0" not found');
  });

  it("resume after a cut, and a corrupted byte caught by the listed Sha256", async () => {
    const shard = "model-00001-of-00002.safetensors";
    const size = data(shard).length;
    ms.faults.cut.set(shard, { afterBytes: 250_000, times: 1 });
    const dir = newDir();
    const err = await pullError("Qwen/Tiny", dir, { retries: 0, jobs: 1 });
    expect(err.code).toBe("HUB_NETWORK");
    const i = ms.log.length;
    await pull("Qwen/Tiny", dir);
    const gets = ms.log.slice(i).filter((l) => l.file === shard);
    expect(gets.length).toBe(2); // the hub's redirect, then the ranged GET from storage
    const ranged = gets.find((l) => l.server === "cdn")!;
    expect(ranged.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(ranged.bytes).toBeLessThan(size);
    expect(readFileSync(join(dir, shard)).equals(data(shard))).toBe(true);

    ms.faults.corrupt.set("tokenizer_config.json", 10);
    try {
      const d2 = newDir();
      const bad = await pullError("Qwen/Tiny", d2, { jobs: 1 });
      expect(bad.code).toBe("HUB_CHECKSUM");
      expect(bad.message).toContain(
        `tokenizer_config.json: sha256 mismatch: expected ${sha256(data("tokenizer_config.json"))}`,
      );
      expect(existsSync(join(d2, "tokenizer_config.json.part"))).toBe(false);
    } finally {
      ms.faults.corrupt.delete("tokenizer_config.json");
    }
    // generation_config.json has no Sha256 in the listing: a wrong byte of the same size cannot be caught, but a
    // short file can.
    ms.faults.cut.set("generation_config.json", { afterBytes: 10, times: 10 });
    try {
      const short = await pullError("Qwen/Tiny", newDir(), { jobs: 1, retries: 1 });
      expect(short.code).toBe("HUB_NETWORK");
      expect(short.message).toContain("generation_config.json");
    } finally {
      ms.faults.cut.delete("generation_config.json");
    }
  });
});

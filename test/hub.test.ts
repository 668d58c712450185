// `tuna model pull` against a fake Hugging Face hub on loopback (its real API and URL layout, LFS files
// redirected to a separate CDN origin): the needed files only, verified, resumable, idempotent, clear errors.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TunaError } from "../src/errors.ts";
import { globToRegExp, MANIFEST, pullModel, readManifest } from "../src/hub/index.ts";
import { DownloadProgress } from "../src/hub/progress.ts";
import { COMMIT, NEEDED, sink, tinyFiles, tuna } from "./fixtures/hub/helpers.ts";
import { type FakeRepo, type HubServer, sha256, startHubServer } from "./fixtures/hub/server.ts";

const files = tinyFiles();
const data = (p: string) => files.find((f) => f.path === p)!.data;
const repos: FakeRepo[] = [
  { id: "acme/tiny", commit: COMMIT, files },
  { id: "acme/gated", commit: COMMIT, files, token: "hf_right" },
  {
    id: "acme/bin-only",
    commit: COMMIT,
    files: files
      .filter((f) => !f.path.includes("safetensors"))
      .filter((f) => ["config.json", "tokenizer.json", "pytorch_model.bin"].includes(f.path)),
  },
];

let hub: HubServer;
let mirror: HubServer;
const tmp = mkdtempSync(join(tmpdir(), "tuna-hub-"));
let n = 0;
const newDir = () => join(tmp, `m${n++}`);

beforeAll(async () => {
  hub = await startHubServer({ layout: "huggingface", repos });
  mirror = await startHubServer({ layout: "huggingface", repos, mirror: true });
});
afterAll(async () => {
  await hub?.close();
  await mirror?.close();
  rmSync(tmp, { recursive: true, force: true });
});

const quick = { retries: 3, backoffMs: 5, env: {} };
async function pull(repo: string, dir: string, extra: Partial<Parameters<typeof pullModel>[0]> = {}) {
  const s = sink();
  const r = await pullModel({ repo, dir, endpoint: hub.url, out: s.out, ...quick, ...extra });
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
const mark = () => hub.log.length;
const since = (i: number) => hub.log.slice(i);

describe("tuna model pull (Hugging Face layout)", () => {
  it("downloads exactly the files a fine-tune needs, pinned to the commit, byte for byte", async () => {
    const dir = newDir();
    const i = mark();
    const r = await pull("acme/gated", dir, { token: "hf_right" });
    expect(r.commit).toBe(COMMIT);
    expect(r.files.map((f) => f.path)).toEqual(NEEDED);
    expect(r.files.every((f) => f.status === "downloaded")).toBe(true);
    for (const p of NEEDED) expect(readFileSync(join(dir, p)).equals(data(p))).toBe(true);
    expect(readdirSync(dir).sort()).toEqual([MANIFEST, ...NEEDED].sort());

    // The server saw downloads of the needed files only, each from the pinned commit.
    const fetched = new Set(
      since(i)
        .filter((l) => l.file)
        .map((l) => l.file),
    );
    expect([...fetched].sort()).toEqual(NEEDED);
    const resolves = since(i).filter((l) => l.server === "hub" && l.url.includes("/resolve/"));
    expect(resolves.length).toBe(NEEDED.length);
    expect(resolves.every((l) => l.url.startsWith(`/acme/gated/resolve/${COMMIT}/`))).toBe(true);
    // LFS files went through the CDN redirect, and the token never left the hub's origin.
    const cdn = since(i).filter((l) => l.server === "cdn");
    expect(cdn.map((l) => l.file).sort()).toEqual([
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "tokenizer.json",
    ]);
    expect(cdn.every((l) => l.auth === undefined)).toBe(true);
    expect(
      since(i)
        .filter((l) => l.server === "hub")
        .every((l) => l.auth === "Bearer hf_right"),
    ).toBe(true);

    expect(r.skippedWeights.sort()).toEqual(["onnx/model.onnx", "pytorch_model.bin", "tiny-q8_0.gguf"]);
    expect(r.warnings.join("\n")).toContain("pytorch_model.bin");
    const m = readManifest(dir)!;
    expect(m.commit).toBe(COMMIT);
    expect(m.files["tokenizer.json"].sha256).toBe(sha256(data("tokenizer.json")));
    expect(Object.keys(m.files).sort()).toEqual(NEEDED);
  });

  it("a second pull of a complete directory downloads nothing; a changed file is fetched again", async () => {
    const dir = newDir();
    await pull("acme/tiny", dir);
    let i = mark();
    const again = await pull("acme/tiny", dir);
    expect(since(i).filter((l) => l.file)).toEqual([]); // only the listing API was asked
    expect(again.files.every((f) => f.status === "present")).toBe(true);
    expect(again.fetchedBytes).toBe(0);

    // Same size, different content: the stat no longer matches the manifest, the hash does not match the hub.
    const cfg = join(dir, "config.json");
    const text = readFileSync(cfg, "utf8");
    writeFileSync(cfg, text.replace('"qwen3"', '"qwen4"'));
    // And a file with no manifest entry but the right content is hashed and kept.
    const m = readManifest(dir)!;
    delete m.files["tokenizer.json"];
    writeFileSync(join(dir, MANIFEST), JSON.stringify(m));
    i = mark();
    const third = await pull("acme/tiny", dir);
    expect(
      since(i)
        .filter((l) => l.file)
        .map((l) => l.file),
    ).toEqual(["config.json"]);
    expect(third.files.find((f) => f.path === "config.json")!.status).toBe("downloaded");
    expect(third.files.find((f) => f.path === "tokenizer.json")!.status).toBe("present");
    expect(readFileSync(cfg, "utf8")).toBe(text);
  });

  it("resumes with a Range request after the connection is cut mid-file", async () => {
    const dir = newDir();
    const shard = "model-00001-of-00002.safetensors";
    const size = data(shard).length;
    hub.faults.cut.set(shard, { afterBytes: 400_000, times: 1 });
    const i = mark();
    const r = await pull("acme/tiny", dir, { jobs: 1 });
    const gets = since(i).filter((l) => l.file === shard && l.server === "cdn");
    expect(gets.length).toBe(2);
    expect(gets[0].range).toBeUndefined();
    expect(gets[1].range).toMatch(/^bytes=\d+-$/);
    const from = Number(/bytes=(\d+)-/.exec(gets[1].range!)![1]);
    expect(from).toBeGreaterThan(0);
    expect(gets[1].status).toBe(206);
    expect(gets[1].bytes).toBe(size - from);
    expect(readFileSync(join(dir, shard)).equals(data(shard))).toBe(true);
    expect(r.stderr).toMatch(/retry 1 .*model-00001-of-00002\.safetensors/);
  });

  it("an interrupted pull keeps the .part; the next pull fetches only the rest", async () => {
    const dir = newDir();
    const shard = "tokenizer.json";
    const size = data(shard).length;
    hub.faults.cut.set(shard, { afterBytes: 3_000_000, times: 1 });
    const err = await pullError("acme/tiny", dir, { retries: 0, jobs: 1 });
    expect(err.code).toBe("HUB_NETWORK");
    expect(err.message).toContain("tokenizer.json");
    expect(err.hint).toContain("resumes");
    const part = join(dir, "tokenizer.json.part");
    expect(existsSync(part)).toBe(true);
    expect(existsSync(join(dir, "tokenizer.json"))).toBe(false);
    const kept = statSync(part).size;
    expect(kept).toBeGreaterThan(0);

    const i = mark();
    const r = await pull("acme/tiny", dir);
    expect(r.stderr).toMatch(/✓ tokenizer\.json .*\(resumed: .* fetched\)/);
    const gets = since(i).filter((l) => l.file === shard && l.server === "cdn");
    expect(gets.length).toBe(1);
    expect(gets[0].range).toBe(`bytes=${kept}-`);
    expect(gets[0].bytes).toBe(size - kept);
    expect(gets[0].bytes).toBeLessThan(size);
    expect(readFileSync(join(dir, shard)).equals(data(shard))).toBe(true);
    expect(existsSync(part)).toBe(false);
  });

  it("a .part left from another version of the file is discarded after it fails to verify", async () => {
    const dir = newDir();
    const shard = "model-00002-of-00002.safetensors";
    const size = data(shard).length;
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${shard}.part`), Buffer.alloc(1000, 7));
    const i = mark();
    await pull("acme/tiny", dir);
    const gets = since(i).filter((l) => l.file === shard && l.server === "cdn");
    expect(gets.map((l) => [l.range, l.bytes])).toEqual([
      ["bytes=1000-", size - 1000],
      [undefined, size],
    ]);
    expect(readFileSync(join(dir, shard)).equals(data(shard))).toBe(true);
  });

  it("a corrupted byte fails the sha256 check, naming the file, expected and actual; the .part is removed", async () => {
    const dir = newDir();
    const shard = "model-00002-of-00002.safetensors";
    hub.faults.corrupt.set(shard, 1000);
    try {
      const err = await pullError("acme/tiny", dir, { jobs: 1 });
      expect(err.code).toBe("HUB_CHECKSUM");
      const bad = Buffer.from(data(shard));
      bad[1000] ^= 0xff;
      expect(err.message).toContain(shard);
      expect(err.message).toContain(`expected ${sha256(data(shard))}`);
      expect(err.message).toContain(`got ${sha256(bad)}`);
      expect(existsSync(join(dir, `${shard}.part`))).toBe(false);
      expect(existsSync(join(dir, shard))).toBe(false);
    } finally {
      hub.faults.corrupt.delete(shard);
    }
    // A regular (non-LFS) file is checked against its git blob id.
    hub.faults.corrupt.set("config.json", 5);
    try {
      const err = await pullError("acme/tiny", newDir(), { jobs: 1 });
      expect(err.code).toBe("HUB_CHECKSUM");
      expect(err.message).toMatch(
        /config\.json: git blob sha1 mismatch: expected [0-9a-f]{40}, got [0-9a-f]{40}/,
      );
    } finally {
      hub.faults.corrupt.delete("config.json");
    }
  });

  it("retries 5xx answers with backoff", async () => {
    hub.faults.fail.set("tokenizer_config.json", { status: 503, times: 2 });
    const i = mark();
    const dir = newDir();
    await pull("acme/tiny", dir);
    const tries = since(i).filter((l) => l.file === "tokenizer_config.json");
    expect(tries.map((l) => l.status)).toEqual([503, 503, 200]);
    expect(readFileSync(join(dir, "tokenizer_config.json")).equals(data("tokenizer_config.json"))).toBe(true);
  });

  it("a stalled connection times out and is retried from where it stopped", async () => {
    const shard = "model-00002-of-00002.safetensors";
    hub.faults.stall.set(shard, { afterBytes: 50_000, times: 1 });
    const i = mark();
    const dir = newDir();
    const r = await pull("acme/tiny", dir, { stallMs: 300 });
    const gets = since(i).filter((l) => l.file === shard && l.server === "cdn");
    expect(gets.map((l) => l.range)).toEqual([undefined, "bytes=50000-"]);
    expect(r.stderr).toMatch(/retry 1 .*model-00002-of-00002\.safetensors: no data for 0.3s/);
    expect(readFileSync(join(dir, shard)).equals(data(shard))).toBe(true);
  });

  it("gated model: 401 without a token, 403 with a token that has no access, each saying what to do", async () => {
    const no = await pullError("acme/gated", newDir());
    expect(no.code).toBe("HUB_GATED");
    expect(no.message).toContain("acme/gated is a gated model: HTTP 401");
    expect(no.hint).toContain(`accept the licence at ${hub.url}/acme/gated`);
    expect(no.hint).toContain("HF_TOKEN");
    const wrong = await pullError("acme/gated", newDir(), { token: "hf_wrong" });
    expect(wrong.code).toBe("HUB_GATED");
    expect(wrong.message).toContain("HTTP 403");
    expect(wrong.hint).toContain("use a token of that account");
    // HF_TOKEN from the environment is used when --token is not given.
    const r = await pull("acme/gated", newDir(), { env: { HF_TOKEN: "hf_right" } });
    expect(r.files.length).toBe(NEEDED.length);
  });

  it("404s name the repository or the revision", async () => {
    const repo = await pullError("acme/nope", newDir());
    expect(repo.code).toBe("HUB_NOT_FOUND");
    expect(repo.message).toContain(`repository acme/nope not found on ${hub.url}`);
    expect(repo.hint).toContain("private repository needs a token");
    const rev = await pullError("acme/tiny", newDir(), { revision: "v9" });
    expect(rev.code).toBe("HUB_NOT_FOUND");
    expect(rev.message).toContain('revision "v9" not found in acme/tiny');
  });

  it("a repository with only .bin weights is refused unless --include asks for them", async () => {
    const err = await pullError("acme/bin-only", newDir());
    expect(err.code).toBe("HUB_NO_SAFETENSORS");
    expect(err.message).toContain("has only PyTorch weights (pytorch_model.bin)");
    expect(err.hint).toContain("--include '*.bin'");
    const dir = newDir();
    const r = await pull("acme/bin-only", dir, { include: ["*.bin"] });
    expect(r.files.map((f) => f.path)).toEqual(["config.json", "pytorch_model.bin", "tokenizer.json"]);
    expect(readFileSync(join(dir, "pytorch_model.bin")).equals(data("pytorch_model.bin"))).toBe(true);
  });

  it("--include adds files in folders", async () => {
    const dir = newDir();
    const r = await pull("acme/tiny", dir, { include: ["onnx/**", "original/params.json"] });
    expect(r.files.map((f) => f.path)).toEqual([...NEEDED, "onnx/model.onnx", "original/params.json"].sort());
    expect(readFileSync(join(dir, "onnx/model.onnx")).equals(data("onnx/model.onnx"))).toBe(true);
  });

  it("CLI through a mirror (--endpoint): the tree API when siblings lack sizes; the directory renders and tokenizes", async () => {
    const dir = newDir();
    const i = mirror.log.length;
    const r = await tuna(["model", "pull", "acme/tiny", "--endpoint", mirror.url, "--dir", dir]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      `acme/tiny@main (${COMMIT.slice(0, 10)}) from ${mirror.url}: 7 file(s), 7 downloaded`,
    );
    expect(r.stderr).toContain("✓ tokenizer.json");
    expect(r.stderr).toContain("warning: not downloaded");
    const log = mirror.log.slice(i);
    expect(log.filter((l) => l.url.includes("/tree/")).length).toBeGreaterThan(2); // paged by Link headers
    expect([...new Set(log.filter((l) => l.file).map((l) => l.file))].sort()).toEqual(NEEDED);
    for (const p of NEEDED) expect(readFileSync(join(dir, p)).equals(data(p))).toBe(true);

    const messages = join(dir, "..", `msgs-${n}.json`);
    writeFileSync(messages, JSON.stringify([{ role: "user", content: "Where is my refund?" }]));
    const render = await tuna(["template", "render", dir, "--messages", messages]);
    expect(render.code, render.stderr).toBe(0);
    expect(render.stdout).toContain("<|im_start|>user\nWhere is my refund?<|im_end|>");
    const tok = await tuna(["tokenize", dir], {}, "<|im_start|>user");
    expect(tok.code, tok.stderr).toBe(0);
    expect(JSON.parse(tok.stdout)).toEqual([151644, 872]);

    const again = await tuna(["model", "pull", "acme/tiny", "--dir", dir], { HF_ENDPOINT: mirror.url });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("0 downloaded (0 B), 7 already present and verified");
  });

  it("CLI errors: code, message and hint on stderr, exit 2", async () => {
    const r = await tuna(["model", "pull", "acme/nope", "--dir", newDir()], { HF_ENDPOINT: hub.url });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("error [HUB_NOT_FOUND]");
    expect(r.stderr).toContain("repository acme/nope not found");
    expect(r.stderr).toContain("hint: check the name");
    const bad = await tuna(["model", "pull", "acme/tiny", "--hub", "civitai"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--hub "civitai" is not one of huggingface, modelscope');
  });
});

describe("progress", () => {
  const stream = (isTTY: boolean) => {
    const s = sink();
    (s.out as { isTTY?: boolean }).isTTY = isTTY;
    return s;
  };
  it("a terminal gets one rewritten line with bar, bytes, rate and ETA", async () => {
    const s = stream(true);
    const p = new DownloadProgress(10_000_000, 2, s.out);
    p.bytes(1_000_000);
    await new Promise((r) => setTimeout(r, 120));
    p.bytes(1_000_000);
    const text = s.text();
    expect(text.startsWith("\r\x1b[2K")).toBe(true);
    expect(text).not.toContain("\n");
    const line = p.line();
    expect(line).toMatch(/^████░+ 20% │ 2\.0 MB\/10\.0 MB │ [\d.]+ MB\/s │ ETA \d+s │ file 1\/2$/);
    p.fileDone("a.safetensors", 2_000_000, 2_000_000);
    expect(s.text()).toContain("\r\x1b[2K  ✓ a.safetensors 2.0 MB\n");
  });
  it("a log gets plain lines", () => {
    const s = stream(false);
    const p = new DownloadProgress(4_000, 1, s.out, 0);
    p.bytes(1_000);
    p.fileDone("config.json", 4_000, 1_000);
    expect(s.text()).toMatch(
      /^ {2}█+░+ 25% │ 1\.0 KB\/4\.0 KB │ .*\n {2}✓ config\.json 4\.0 KB \(resumed: 1\.0 KB fetched\)\n$/,
    );
    expect(s.text()).not.toContain("\r");
  });
});

describe("file selection globs", () => {
  it("match like allow_patterns: * within a folder, ** across, bare names anywhere", () => {
    expect(globToRegExp("*.bin").test("pytorch_model.bin")).toBe(true);
    expect(globToRegExp("*.bin").test("sub/pytorch_model.bin")).toBe(true);
    expect(globToRegExp("onnx/*.onnx").test("onnx/model.onnx")).toBe(true);
    expect(globToRegExp("onnx/*.onnx").test("onnx/deep/model.onnx")).toBe(false);
    expect(globToRegExp("onnx/**").test("onnx/deep/model.onnx")).toBe(true);
    expect(globToRegExp("model-?.safetensors").test("model-1.safetensors")).toBe(true);
    expect(globToRegExp("model.*").test("modelxsafetensors")).toBe(false);
  });
});

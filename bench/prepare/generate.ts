// FineTome-100k-shaped conversations, generated deterministically (no download): ShareGPT records
// `{"conversations": [{"from": "human"|"gpt", "value": ...}], "source": ...}`, mixed English / Chinese / code.
//
// Length: FineTome-100k averages roughly 1–1.5k Qwen3 tokens per conversation with a long right tail; we draw
// each conversation's token budget from a log-normal (calibrated so that the mean comes out ≈ 1.2k tokens, capped at 12k) and
// split it over 1–4 exchanges, answers about 4× longer than questions. Token estimates used to size text:
// English ≈ 4.3 characters a token (real words; the made-up ones are shorter in tokens, hence the lower median), Chinese ≈ 1.4 characters, code ≈ 3.2 characters (measured with the
// Qwen3 tokenizer on this generator's own output; bench/prepare/run.ts prints the real mean).
import { once } from "node:events";
import { createWriteStream } from "node:fs";

/** mulberry32: small, fast, and the same sequence on every platform. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(r: () => number, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];

const EN = (
  "the a of to and in is that for it as with on be by this are or from an at which can not you your we " +
  "have will more if their one all has its other so also when about how what these some into than them only " +
  "payment refund account customer card transfer balance fee currency exchange rate merchant statement " +
  "function value number result example problem solution method approach equation variable system model " +
  "data process time step first second next then finally however therefore because while although " +
  "important different specific general common simple complex possible necessary available following " +
  "explain describe consider calculate determine understand provide include require represent " +
  "algorithm memory performance network security interface language history science energy climate " +
  "economy market policy research analysis structure pattern question answer reason evidence context"
).split(" ");
const ZH = (
  "我们 可以 这个 问题 因为 所以 但是 如果 需要 通过 进行 已经 没有 一个 什么 时候 方法 系统 数据 " +
  "支付 退款 账户 客户 银行卡 转账 余额 手续费 汇率 商户 账单 首先 其次 最后 然而 因此 例如 " +
  "函数 变量 结果 分析 计算 理解 重要 不同 具体 一般 复杂 简单 可能 必要 包括 表示 算法 内存 性能 " +
  "网络 安全 接口 语言 历史 科学 能源 气候 经济 市场 政策 研究 结构 模式 证据 背景 解释 描述 考虑"
).split(" ");
// English: the common words above plus 8k made-up words of 2–3 common English syllables, drawn Zipf-like (rank^-1), so the
// tokenizer's word cache misses about as often as on real text (a small closed vocabulary would flatter it).
const SYLLABLES =
  "con re pro ex in de com dis per ter ment tion ing er al ous ive able ist ent port form".split(" ");
const VOCAB: string[] = (() => {
  const r = rng(12345);
  const words = [...EN];
  const seen = new Set(words);
  while (words.length < 8_000) {
    let w = "";
    const n = r() < 0.7 ? 2 : 3;
    for (let i = 0; i < n; i++) w += pick(r, SYLLABLES);
    if (!seen.has(w)) {
      seen.add(w);
      words.push(w);
    }
  }
  return words;
})();
/** Cumulative Zipf weights over VOCAB, for inverse-CDF draws. */
const ZIPF: Float64Array = (() => {
  const c = new Float64Array(VOCAB.length);
  let acc = 0;
  for (let i = 0; i < VOCAB.length; i++) c[i] = acc += 1 / (i + 1);
  for (let i = 0; i < c.length; i++) c[i] /= acc;
  return c;
})();
function zipfWord(r: () => number): string {
  const u = r();
  let lo = 0;
  let hi = ZIPF.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ZIPF[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return VOCAB[lo];
}
const IDENT = "data items result total count index value node tree cache user order amount rate key".split(
  " ",
);

function englishSentence(r: () => number): string {
  const n = 6 + Math.floor(r() * 18);
  const w: string[] = [];
  for (let i = 0; i < n; i++) w.push(zipfWord(r));
  if (r() < 0.15) w.splice(Math.floor(r() * n), 0, String(Math.floor(r() * 10000) / 100));
  const s = w.join(" ");
  return `${s[0].toUpperCase()}${s.slice(1)}${r() < 0.1 ? "?" : "."}`;
}

function chineseSentence(r: () => number): string {
  const n = 5 + Math.floor(r() * 14);
  let s = "";
  for (let i = 0; i < n; i++) {
    s += pick(r, ZH);
    if (i > 2 && r() < 0.12) s += "，";
  }
  return `${s}${r() < 0.1 ? "？" : "。"}`;
}

function codeBlock(r: () => number, targetChars: number): string {
  const lang = r() < 0.6 ? "python" : "typescript";
  const lines: string[] = [];
  let chars = 0;
  let depth = 0;
  while (chars < targetChars) {
    const a = pick(r, IDENT);
    const b = pick(r, IDENT);
    const k = Math.floor(r() * 100);
    const ind = "    ".repeat(depth);
    let line: string;
    const c = r();
    if (lang === "python") {
      if (c < 0.15) {
        line = `${ind}def ${a}_${b}(${a}, ${b}=${k}):`;
        depth = Math.min(depth + 1, 3);
      } else if (c < 0.3) {
        line = `${ind}for ${a} in range(len(${b})):`;
        depth = Math.min(depth + 1, 3);
      } else if (c < 0.4 && depth > 0) {
        line = `${ind}return ${a} + ${b} * ${k}`;
        depth--;
      } else line = `${ind}${a}_${k} = ${b}[${k % 7}] if ${a} else ${b}.get("${a}", ${k})`;
    } else {
      if (c < 0.15) {
        line = `${ind}function ${a}${b[0].toUpperCase()}${b.slice(1)}(${a}: number[]): number {`;
        depth = Math.min(depth + 1, 3);
      } else if (c < 0.3) {
        line = `${ind}for (const ${a} of ${b}) {`;
        depth = Math.min(depth + 1, 3);
      } else if (c < 0.42 && depth > 0) {
        depth--;
        line = `${"    ".repeat(depth)}}`;
      } else line = `${ind}const ${a}${k} = ${b}.map((x) => x * ${k}).filter(Boolean);`;
    }
    lines.push(line);
    chars += line.length + 1;
  }
  return `\`\`\`${lang}\n${lines.join("\n")}\n\`\`\``;
}

/** Standard normal from two uniforms (Box–Muller). */
function normal(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** A text of about `tokens` tokens in the conversation's language, with code blocks in some answers. */
function text(r: () => number, tokens: number, zh: boolean, code: boolean): string {
  const parts: string[] = [];
  let left = tokens;
  while (left > 0) {
    if (code && r() < 0.25 && left > 60) {
      const t = Math.min(left, 40 + Math.floor(r() * 300));
      parts.push(codeBlock(r, t * 3.2));
      left -= t;
      continue;
    }
    const sentences = 2 + Math.floor(r() * 5);
    let para = "";
    for (let i = 0; i < sentences && left > 0; i++) {
      const s = zh ? chineseSentence(r) : englishSentence(r);
      para += zh ? s : `${i ? " " : ""}${s}`;
      left -= s.length / (zh ? 1.4 : 4.3);
    }
    parts.push(r() < 0.2 ? `${Math.floor(r() * 9) + 1}. ${para}` : para);
  }
  return parts.join("\n\n");
}

export interface GenerateOptions {
  conversations: number;
  seed?: number;
}

/** One FineTome-like record (record i of seed s is the same on every run). */
export function fineTomeRecord(i: number, seed = 0): Record<string, unknown> {
  const r = rng((seed * 1_000_003 + i * 2_654_435_761) >>> 0);
  const budget = Math.min(12_000, Math.max(60, Math.round(Math.exp(6.7 + 0.75 * normal(r)))));
  const zh = r() < 0.3;
  const code = r() < 0.3;
  const exchanges = budget < 400 ? 1 : 1 + Math.floor(r() * r() * 4);
  const conversations: { from: string; value: string }[] = [];
  if (r() < 0.1)
    conversations.push({
      from: "system",
      value: zh ? "你是一个乐于助人的助手。" : "You are a helpful assistant.",
    });
  const per = budget / exchanges;
  for (let k = 0; k < exchanges; k++) {
    const q = Math.max(8, per * (0.1 + 0.2 * r()));
    conversations.push({ from: "human", value: text(r, q, zh, false) });
    conversations.push({ from: "gpt", value: text(r, per - q, zh, code) });
  }
  return {
    conversations,
    source: pick(r, ["infini-instruct-top-500k", "WebInstructSub_axolotl", "flan", "airoboros"]),
    score: 4 + r(),
  };
}

/** Writes `n` records as JSONL; returns the byte count. */
export async function writeFineTomeLike(path: string, o: GenerateOptions): Promise<number> {
  const out = createWriteStream(path);
  let bytes = 0;
  for (let i = 0; i < o.conversations; i++) {
    const line = `${JSON.stringify(fineTomeRecord(i, o.seed ?? 0))}\n`;
    bytes += Buffer.byteLength(line);
    if (!out.write(line)) await once(out, "drain");
  }
  out.end();
  await once(out, "finish");
  return bytes;
}

// A deterministic mixed corpus for tokenizer parity tests and benchmarks: the repository's own sources, Chinese
// customer-service prose, English prose with contractions, random text from many scripts (with combining marks,
// some not in NFC), whitespace runs, CRLF, digit runs, emoji with ZWJ sequences, JSON, and the text of special and
// added tokens (whole and partial). Same seed and same repository → the same texts.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

/** A seeded PRNG in [0, 1): the corpus generator's, shared with the tokenizer tests. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ZH_WORDS =
  "您好 请问 退款 支付 账户 订单 银行卡 信用卡 余额 转账 手续费 已经 处理 客服 我们 您的 问题 感谢 耐心 等待 工作日 到账 失败 成功 验证码 密码 安全 冻结 解冻 申请 审核 通过 拒绝 原因 金额 人民币 美元 汇率 交易 记录 查询 修改 绑定 解绑 优惠券 积分 会员 服务 时间 联系 电话 邮箱 地址 身份证 实名 认证 风险 提示 请 在 的 了 是 不 会 可以 需要 如果 因为 所以 但是 和 与 或者 我 你 他 这 那 个 一 二 三 五 十 百 千 万".split(
    " ",
  );
const ZH_PUNCT = "，。！？、；：“”（）《》…—".split("");
const EN_WORDS =
  "the a to of and in is it you that for on your was with be as this have are refund payment card account order transfer fee balance please thank we can will not help support bank charge pending declined verify code".split(
    " ",
  );
const CONTRACTIONS = [
  "'s",
  "'t",
  "'re",
  "'ve",
  "'m",
  "'ll",
  "'d",
  "'S",
  "'T",
  "'RE",
  "'Ve",
  "'M",
  "'LL",
  "'D",
  "'ſ",
  "'x",
];
const SPECIALS = [
  "<|im_start|>",
  "<|im_end|>",
  "<|endoftext|>",
  "<think>",
  "</think>",
  "<tool_call>",
  "</tool_call>",
  "<tool_response>",
  "<|fim_prefix|>",
  "<|vision_pad|>",
  "<|im_start",
  "<|im_",
  "<think",
  "</",
  "<|",
  "|>",
];
// [first, last] code point ranges of letters from many scripts, combining marks, and symbols.
const SCRIPTS: [number, number][] = [
  [0x41, 0x7a],
  [0xc0, 0x24f], // Latin-1 and Extended-A/B
  [0x370, 0x3ff], // Greek
  [0x400, 0x4ff], // Cyrillic
  [0x5d0, 0x5ea], // Hebrew
  [0x620, 0x64a], // Arabic
  [0x660, 0x669], // Arabic-Indic digits
  [0x900, 0x97f], // Devanagari (with marks)
  [0xe01, 0xe5b], // Thai
  [0x1780, 0x17f9], // Khmer
  [0x3041, 0x30ff], // kana (includes U+3099/309A combining marks)
  [0xac00, 0xd7a3], // Hangul syllables
  [0x1100, 0x11ff], // Hangul jamo (compose under NFC)
  [0x4e00, 0x9fa5], // CJK
  [0x300, 0x36f], // combining diacritics
  [0xff01, 0xff5e], // fullwidth forms
  [0x2000, 0x206f], // general punctuation and spaces
  [0x2150, 0x218b], // number forms (Roman numerals: \p{N})
  [0x1f300, 0x1f64f], // emoji
  [0x1d400, 0x1d7ff], // math alphanumerics (astral letters/digits)
  [0x20000, 0x2a6df], // CJK extension B (astral letters)
];
const EMOJI = ["👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇨🇳🇺🇸", "❤️", "🧑🏿‍🚀", "😀😃😄", "✔️", "1️⃣", "🫶"];
const SPACES = [
  " ",
  "  ",
  "   ",
  "\t",
  "\n",
  "\r\n",
  "\n\n",
  " \n ",
  "\u3000",
  "\u00a0",
  "\u2003 ",
  " \t\n\r",
  "\v",
  "\f",
  "\u0085",
  "\ufeff",
];

function repoSources(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (name === "node_modules" || name.startsWith(".")) continue;
      const p = join(dir, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (/\.(ts|py|md|json|yaml|mjs)$/.test(name) && st.size < 200_000)
        out.push(readFileSync(p, "utf8"));
    }
  };
  for (const d of ["src", "engine", "docs", "bench", "test", "examples"]) walk(join(root, d));
  return out;
}

/** Texts whose UTF-8 size totals at least `minBytes`. */
export function buildCorpus(repoRoot: string, minBytes = 5.5 * 1024 * 1024, seed = 20261128): string[] {
  const rnd = mulberry32(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)];
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const zipf = <T>(a: readonly T[]): T => a[Math.floor(a.length * rnd() * rnd())];
  const sources = repoSources(repoRoot);

  const zh = () => {
    let s = "";
    for (let k = int(5, 60); k > 0; k--) {
      s += zipf(ZH_WORDS);
      const r = rnd();
      if (r < 0.12) s += pick(ZH_PUNCT);
      else if (r < 0.16) s += ` ${pick(EN_WORDS)} `;
      else if (r < 0.19) s += String(int(0, 99999));
    }
    return `${s}。`;
  };
  const en = () => {
    let s = "";
    for (let k = int(5, 40); k > 0; k--) {
      const w = zipf(EN_WORDS);
      s += rnd() < 0.1 ? w[0].toUpperCase() + w.slice(1) : w;
      const r = rnd();
      if (r < 0.06) s += pick(CONTRACTIONS);
      else if (r < 0.1) s += pick([",", ".", "!", "?", ":", ";", " -", "(", ")", '"']);
      s += r < 0.97 ? " " : pick(SPACES);
    }
    return s;
  };
  const randomScript = () => {
    const [a, b] = pick(SCRIPTS);
    let s = "";
    for (let k = int(1, 30); k > 0; k--) {
      const cp = int(a, b);
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      s += String.fromCodePoint(cp);
      if (rnd() < 0.2) s += pick(SPACES);
    }
    return s;
  };
  const digits = () => {
    const r = rnd();
    if (r < 0.4) return String(int(0, 2 ** 31)) + String(int(0, 2 ** 31));
    if (r < 0.6) return `${int(0, 9999)}.${int(0, 99)} USD`;
    if (r < 0.8) return `+86 ${int(100, 999)}-${int(1000, 9999)}-${int(1000, 9999)}`;
    return "١٢٣٤ １２３４ ⅫⅣ ²³ 0x1F";
  };
  const spaces = () => {
    let s = "";
    for (let k = int(1, 8); k > 0; k--) s += pick(SPACES);
    return s + pick(["", "x", "中", "1", "!", "😀"]);
  };
  const json = () =>
    JSON.stringify({
      name: pick(["refund_order", "get_balance", "transfer"]),
      arguments: {
        order_id: `A${int(1, 1e6)}`,
        amount: int(1, 1e5) / 100,
        note: zh().slice(0, 12),
        en: en().slice(0, 20),
      },
    });
  const chat = () =>
    `<|im_start|>system\nYou are a payment support assistant.<|im_end|>\n<|im_start|>user\n${en()}${zh()}<|im_end|>\n<|im_start|>assistant\n<think>\n${en()}\n</think>\n\n${zh()}\n<tool_call>\n${json()}\n</tool_call><|im_end|>\n`;

  const gens = [
    zh,
    zh,
    en,
    en,
    randomScript,
    randomScript,
    digits,
    spaces,
    json,
    chat,
    () => pick(SPECIALS),
    () => pick(EMOJI),
  ];
  const texts: string[] = [];
  let bytes = 0;
  let src = 0;
  while (bytes < minBytes) {
    let t: string;
    if (src < sources.length && rnd() < 0.1) t = sources[src++];
    else {
      t = "";
      for (let k = int(1, 40); k > 0; k--) {
        t += pick(gens)();
        if (rnd() < 0.3) t += pick(SPACES);
      }
      if (rnd() < 0.2) t = t.replace(/\n/g, "\r\n");
    }
    texts.push(t);
    bytes += Buffer.byteLength(t, "utf8");
  }
  return texts;
}

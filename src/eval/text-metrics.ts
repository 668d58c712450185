// Answer metrics that work for Chinese as well as English: exact match, token F1 (SQuAD-style bag of tokens)
// and ROUGE-L (F1 of the longest common subsequence).
//
// Normalisation: NFKC (full-width letters, digits and punctuation become ASCII), lowercase, thousands commas
// dropped inside numbers ("1,000" = "1000"), every punctuation or symbol character (ASCII, full-width and CJK:
// ，。、！？“”《》…) becomes a space, except a decimal point between digits ("3.5" stays one token).
// Tokens: each Han / Hiragana / Katakana / Hangul character is one token (Chinese has no spaces, and scoring
// by characters is what Chinese ROUGE and C-Eval-style F1 do); everything else splits on whitespace.

const CJK_CHAR = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3005\u30fc]/u;
const CJK_GLOBAL = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3005\u30fc]/gu;

export function isCjkChar(ch: string): boolean {
  return CJK_CHAR.test(ch);
}

/** The normalised text (before splitting). */
export function normalizeText(text: string): string {
  return text
    .normalize("NFKC")
    .toLowerCase()
    .replace(/(\d),(?=\d{3}(?!\d))/g, "$1")
    .replace(/(\d)\.(?=\d)/g, "$1\u0000") // protect decimal points
    .replace(/[\p{P}\p{S}]/gu, " ")
    .replaceAll("\u0000", ".");
}

/** Tokens as described at the top of this file. */
export function answerTokens(text: string): string[] {
  return normalizeText(text)
    .replace(CJK_GLOBAL, " $& ")
    .split(/\s+/)
    .filter((t) => t !== "");
}

/** 1 when the normalised token sequences are equal (so "退款 3 天" = "退款3天。"), else 0. */
export function exactMatch(prediction: string, reference: string): number {
  const a = answerTokens(prediction);
  const b = answerTokens(reference);
  return a.length === b.length && a.every((t, i) => t === b[i]) ? 1 : 0;
}

export interface PRF {
  precision: number;
  recall: number;
  f1: number;
}

const prf = (overlap: number, nPred: number, nRef: number): PRF => {
  if (nPred === 0 || nRef === 0) {
    // SQuAD's convention: two empty answers agree fully; one empty answer shares nothing.
    const same = nPred === nRef ? 1 : 0;
    return { precision: same, recall: same, f1: same };
  }
  if (overlap === 0) return { precision: 0, recall: 0, f1: 0 };
  const precision = overlap / nPred;
  const recall = overlap / nRef;
  return { precision, recall, f1: (2 * precision * recall) / (precision + recall) };
};

/** Bag-of-tokens overlap (each token counted as often as it appears in both). */
export function tokenF1(prediction: string, reference: string): PRF {
  const p = answerTokens(prediction);
  const r = answerTokens(reference);
  const counts = new Map<string, number>();
  for (const t of r) counts.set(t, (counts.get(t) ?? 0) + 1);
  let overlap = 0;
  for (const t of p) {
    const c = counts.get(t) ?? 0;
    if (c > 0) {
      overlap++;
      counts.set(t, c - 1);
    }
  }
  return prf(overlap, p.length, r.length);
}

/** Length of the longest common subsequence of two token lists (O(n·m) time, O(m) memory). */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  let prev = new Uint32Array(b.length + 1);
  let cur = new Uint32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      cur[j] = a[i - 1] === b[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[b.length];
}

/** ROUGE-L: precision = LCS/|prediction|, recall = LCS/|reference|, F with β = 1. */
export function rougeL(prediction: string, reference: string): PRF {
  const p = answerTokens(prediction);
  const r = answerTokens(reference);
  return prf(lcsLength(p, r), p.length, r.length);
}

export interface AnswerScores {
  exact_match: number;
  token_f1: number;
  rouge_l: number;
}

/** All three against the best of several references (the usual convention for paraphrased answers). */
export function scoreAnswer(prediction: string, references: string | readonly string[]): AnswerScores {
  const refs = typeof references === "string" ? [references] : references;
  if (refs.length === 0) throw new Error("scoreAnswer needs at least one reference");
  let best: AnswerScores = { exact_match: 0, token_f1: 0, rouge_l: 0 };
  for (const ref of refs) {
    best = {
      exact_match: Math.max(best.exact_match, exactMatch(prediction, ref)),
      token_f1: Math.max(best.token_f1, tokenF1(prediction, ref).f1),
      rouge_l: Math.max(best.rouge_l, rougeL(prediction, ref).f1),
    };
  }
  return best;
}

/** Mean of each metric over pairs; per-example scores come back too (for histograms and worst examples). */
export function scoreAnswers(
  pairs: readonly { prediction: string; references: string | readonly string[] }[],
): {
  mean: AnswerScores;
  per_example: AnswerScores[];
} {
  const per_example = pairs.map((p) => scoreAnswer(p.prediction, p.references));
  const n = per_example.length || 1;
  const sum = (k: keyof AnswerScores) => per_example.reduce((s, x) => s + x[k], 0) / n;
  return {
    mean: { exact_match: sum("exact_match"), token_f1: sum("token_f1"), rouge_l: sum("rouge_l") },
    per_example,
  };
}

// GSM8K answer extraction and accuracy, and the forgetting guard built on it: a fine-tune that makes the
// model worse at grade-school maths than the base model by more than the configured drop is flagged.
import { parseQwen3Output } from "./qwen3-output.ts";

/** The reference answer: the number after `#### ` in a GSM8K `answer` field. */
export function gsm8kReference(answer: string): number | undefined {
  const m = /####\s*(.+?)\s*$/.exec(answer.trim());
  return m ? toNumber(m[1]) : undefined;
}

// A number as people write it: optional sign and $, thousands commas, decimals ("-$1,234.50", ".5", "18").
const NUMBER = /-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?/g;

function toNumber(s: string): number | undefined {
  const cleaned = s.replace(/[$,\s]/g, "").replace(/\.$/, "");
  if (!/^-?(?:\d+\.?\d*|\.\d+)$/.test(cleaned)) return undefined;
  return Number(cleaned);
}

function lastNumber(text: string): number | undefined {
  let last: number | undefined;
  for (const m of text.matchAll(NUMBER)) {
    if (!/\d/.test(m[0])) continue;
    const n = toNumber(m[0]);
    if (n !== undefined) last = n;
  }
  return last;
}

/** Contents of every `\boxed{…}` (braces may nest: `\boxed{\frac{1}{2}}`). */
function boxedContents(text: string): string[] {
  const out: string[] = [];
  let from = 0;
  for (;;) {
    const at = text.indexOf("\\boxed{", from);
    if (at === -1) return out;
    let depth = 1;
    let i = at + "\\boxed{".length;
    const start = i;
    for (; i < text.length && depth > 0; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}") depth--;
    }
    out.push(text.slice(start, depth === 0 ? i - 1 : i));
    from = i;
  }
}

/**
 * The model's final answer: reasoning in `<think>` is ignored; the last `\boxed{}` wins when there is one,
 * else the last number in the text. Commas, `$` and a trailing full stop are allowed around it.
 */
export function extractGsm8kAnswer(output: string): number | undefined {
  const parsed = parseQwen3Output(output);
  const text = parsed.content || (parsed.reasoning ?? output);
  const boxed = boxedContents(text);
  for (let i = boxed.length - 1; i >= 0; i--) {
    const n = lastNumber(boxed[i].replace(/\\[a-z]+/gi, " "));
    if (n !== undefined) return n;
  }
  return lastNumber(text);
}

export function gsm8kCorrect(output: string, referenceAnswer: string): boolean {
  const ref = gsm8kReference(referenceAnswer);
  const got = extractGsm8kAnswer(output);
  return ref !== undefined && got !== undefined && Math.abs(ref - got) < 1e-6;
}

export interface Gsm8kResult {
  accuracy: number;
  total: number;
  correct: number;
  per_example: { predicted?: number; reference?: number; correct: boolean }[];
}

export function gsm8kAccuracy(pairs: readonly { output: string; answer: string }[]): Gsm8kResult {
  const per_example = pairs.map(({ output, answer }) => {
    const predicted = extractGsm8kAnswer(output);
    const reference = gsm8kReference(answer);
    return { predicted, reference, correct: gsm8kCorrect(output, answer) };
  });
  const correct = per_example.filter((e) => e.correct).length;
  return { accuracy: pairs.length ? correct / pairs.length : 0, total: pairs.length, correct, per_example };
}

export interface ForgettingVerdict {
  base: number;
  tuned: number;
  /** base − tuned, in accuracy points (0–1); negative when the tuned model is better. */
  drop: number;
  max_drop: number;
  flagged: boolean;
  message: string;
}

/** Flags a tuned model whose accuracy fell by more than `maxDrop` (absolute, 0–1) below the base model's. */
export function forgettingGuard(base: number, tuned: number, maxDrop: number): ForgettingVerdict {
  for (const [name, v] of [
    ["base accuracy", base],
    ["tuned accuracy", tuned],
    ["max drop", maxDrop],
  ] as const) {
    if (!(v >= 0 && v <= 1)) throw new RangeError(`${name} must be within 0..1, got ${v}`);
  }
  const drop = base - tuned;
  // A tiny tolerance so that a drop exactly at the limit (0.75 − 0.7 vs 0.05) is not flagged by rounding.
  const flagged = drop > maxDrop + 1e-9;
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const message = flagged
    ? `forgetting: accuracy fell from ${pct(base)} to ${pct(tuned)} (−${pct(drop)}), more than the allowed ${pct(maxDrop)}`
    : `ok: accuracy ${pct(base)} → ${pct(tuned)} (allowed drop ${pct(maxDrop)})`;
  return { base, tuned, drop, max_drop: maxDrop, flagged, message };
}

// Is thinking still switchable after fine-tuning? Given the model's outputs generated with thinking on and
// with thinking off, count how many *reason first*: open with a non-empty `<think>` block before any answer.
// With thinking on that rate should stay near 1; with it off (Qwen3's template pre-fills an empty
// `<think>\n\n</think>` in the prompt), near 0. A fine-tune on data of one kind only tends to break the other.

export type ThinkingShape = "reasoned" | "empty_think" | "no_think";

/**
 * How one output starts. `promptOpensThink`: the prompt already ended in `<think>\n` (Qwen3-2507 thinking
 * models), so the output is reasoning up to `</think>` with no opening tag.
 */
export function thinkingShape(output: string, opts: { promptOpensThink?: boolean } = {}): ThinkingShape {
  const text = output.trimStart();
  let body: string | undefined;
  if (text.startsWith("<think>")) {
    const close = text.indexOf("</think>");
    body = close === -1 ? text.slice("<think>".length) : text.slice("<think>".length, close);
  } else if (opts.promptOpensThink) {
    const close = text.indexOf("</think>");
    if (close !== -1) body = text.slice(0, close);
  }
  if (body === undefined) return "no_think";
  return body.trim() === "" ? "empty_think" : "reasoned";
}

export interface ThinkingRate {
  total: number;
  reasoned: number;
  empty_think: number;
  no_think: number;
  /** reasoned / total (0 when there are no outputs). */
  rate: number;
}

export function thinkingRate(
  outputs: readonly string[],
  opts: { promptOpensThink?: boolean } = {},
): ThinkingRate {
  const r: ThinkingRate = { total: outputs.length, reasoned: 0, empty_think: 0, no_think: 0, rate: 0 };
  for (const o of outputs) r[thinkingShape(o, opts)]++;
  r.rate = r.total ? r.reasoned / r.total : 0;
  return r;
}

export interface ThinkingCheck {
  on: ThinkingRate;
  off: ThinkingRate;
  /** on.rate ≥ minOnRate and off.rate ≤ maxOffRate. */
  switchable: boolean;
}

/** Both modes at once, with the thresholds a run's config sets (defaults: ≥ 0.9 reason when on, ≤ 0.1 when off). */
export function thinkingCheck(
  outputs: { on: readonly string[]; off: readonly string[] },
  opts: { minOnRate?: number; maxOffRate?: number; promptOpensThink?: boolean } = {},
): ThinkingCheck {
  const on = thinkingRate(outputs.on, opts);
  // With thinking off the prompt never opens a think block, whatever the model family.
  const off = thinkingRate(outputs.off);
  const switchable = on.rate >= (opts.minOnRate ?? 0.9) && off.rate <= (opts.maxOffRate ?? 0.1);
  return { on, off, switchable };
}

// `tuna eval <config.yaml>`: the base model and tuned adapter(s) on the same held-out sets with the same
// prompts, scored with src/eval, written as a report.
//
// <out>/
//   config.json                 the resolved eval config
//   predictions/<row>.jsonl     one line per prompt: set, id, prompt hash, raw text, parsed output, scores
//   report.md|json|html         src/eval's report writer: one row per model (base, base+rag, tuned, tuned+rag)
//   summary.json                metrics per row, forgetting verdicts, thinking checks, tool results, judge notes
//
// Every prompt is built once (template + tokenizer) and sent for every model, so rows differ only by weights
// (and, for the +rag rows, by the retrieved passages, which are the same for every model).
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { z } from "zod";
import { resolvePath } from "../../config/load.ts";
import {
  type ChatAnswer,
  type ChatModel,
  chatPrompt,
  loadChatModel,
  resolveAdapterDir,
  startGenerator,
} from "../../engine/generate.ts";
import { at, TunaError } from "../../errors.ts";
import { BfclAnswer, BfclCase, checkCase, type ExpectedCall } from "../../eval/bfcl.ts";
import { Bm25Index } from "../../eval/bm25.ts";
import { type ForgettingVerdict, forgettingGuard, gsm8kCorrect, gsm8kReference } from "../../eval/gsm8k.ts";
import { toPlain } from "../../eval/pyjson.ts";
import { parseQwen3Output } from "../../eval/qwen3-output.ts";
import { type ModelResult, writeReport } from "../../eval/report.ts";
import { scoreAnswer } from "../../eval/text-metrics.ts";
import { type ThinkingCheck, thinkingCheck, thinkingShape } from "../../eval/thinking.ts";
import { readJsonLines } from "../../eval/tool-eval.ts";
import type { TemplateMessage } from "../../template/render.ts";
import { formatDuration } from "../train/progress.ts";
import type { EvalConfig } from "./config.ts";
import { judgeAll } from "./judge.ts";

/** One row of the report: a model (base or adapter), with or without retrieval. */
export interface EvalRow {
  name: string;
  /** Adapter name given to the engine; null = the base model. */
  adapter: string | null;
  adapterDir: string | null;
  rag: boolean;
}

/** One prompt, built once, asked of every model it applies to. */
interface Prompt {
  set: "answers" | "tools" | "general" | "thinking";
  id: string;
  messages: TemplateMessage[];
  tools?: unknown[];
  thinking: boolean;
  /** For the +rag rows: the same question with retrieved passages in the system prompt. */
  rag: boolean;
  input: string;
  reference?: string;
  text: string;
  ids: Int32Array;
  score: (a: ChatAnswer) => Record<string, number>;
  /** Extra data for the set's aggregate (tools: the check result). */
  detail?: (a: ChatAnswer) => Record<string, unknown>;
}

export interface Prediction {
  set: string;
  id: string;
  prompt_sha256: string;
  prompt_tokens: number;
  text: string;
  reasoning?: string;
  content: string;
  tool_calls: unknown[];
  reason: string;
  generated_tokens: number;
  scores: Record<string, number>;
  detail?: Record<string, unknown>;
  judge?: { score: number | null; raw: string };
}

export interface EvalSummary {
  out_dir: string;
  models: { name: string; adapter_dir: string | null; rag: boolean; metrics: Record<string, number> }[];
  forgetting: (ForgettingVerdict & { model: string })[];
  thinking: Record<string, ThinkingCheck>;
  prompts: Record<string, number>;
  generated_tokens: number;
  elapsed_s: number;
  notes: string[];
}

const QuestionLine = z
  .object({
    id: z.union([z.string().min(1), z.number()]).transform(String),
    question: z.string().min(1),
    reference: z.union([z.string(), z.array(z.string()).min(1)]),
  })
  .loose();
const Gsm8kLine = z.object({ question: z.string().min(1), answer: z.string().min(1) }).loose();

function readLines<T>(
  file: string,
  schema: z.ZodType<T>,
  shape: string,
  limit?: number,
): { line: number; value: T }[] {
  const rows = readJsonLines(file);
  const out: { line: number; value: T }[] = [];
  for (const { line, value } of rows) {
    if (limit !== undefined && out.length >= limit) break;
    const r = schema.safeParse(value);
    if (!r.success) {
      const issue = r.error.issues[0];
      throw new TunaError("EVAL_BAD_LINE", `field ${issue.path.join(".") || "(line)"}: ${issue.message}`, {
        where: at(file, line),
        hint: `each line must look like ${shape}`,
      });
    }
    out.push({ line, value: r.data });
  }
  if (out.length === 0)
    throw new TunaError("EVAL_EMPTY_SET", `no lines in ${file}`, { hint: `add lines like ${shape}` });
  return out;
}

/** BFCL's parameter types → JSON Schema, as BFCL does for OpenAI-style models (`dict` → object, `float` → number). */
const BFCL_TO_JSON: Record<string, string> = {
  dict: "object",
  float: "number",
  tuple: "array",
  list: "array",
  bool: "boolean",
  any: "string",
};
export function bfclToJsonSchema(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(bfclToJsonSchema);
  if (v === null || typeof v !== "object") return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === "type" && typeof x === "string") out[k] = BFCL_TO_JSON[x] ?? x;
    else if (k === "properties" && x && typeof x === "object" && !Array.isArray(x)) {
      out[k] = Object.fromEntries(Object.entries(x).map(([p, s]) => [p, bfclToJsonSchema(s)]));
    } else if (k === "items" || k === "parameters") out[k] = bfclToJsonSchema(x);
    else out[k] = x;
  }
  return out;
}

/** Adapter names → directories, from the config's map or list (a list names each by its run folder). */
export function resolveAdapters(adapters: EvalConfig["adapters"]): Record<string, string> {
  const out: Record<string, string> = {};
  const entries = Array.isArray(adapters)
    ? adapters.map((p) => {
        const dir = resolveAdapterDir(resolvePath(p));
        const name = basename(dir) === "adapter" ? basename(dirname(dir)) : basename(dir);
        return [name.replace(/[^A-Za-z0-9_.-]/g, "-"), p] as const;
      })
    : Object.entries(adapters);
  for (const [name, p] of entries) {
    if (name in out) {
      throw new TunaError("EVAL_ADAPTER_NAME", `two adapters are named "${name}"`, {
        hint: "give adapters as a map {name: path} to name them apart",
      });
    }
    out[name] = resolveAdapterDir(resolvePath(p));
  }
  return out;
}

function sha(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex").slice(0, 16);
}

const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

/** Builds every prompt of the config's sets (same for every model). */
function buildPrompts(config: EvalConfig, model: ChatModel, notes: string[]): Prompt[] {
  const g = config.generation;
  const prompts: Omit<Prompt, "text" | "ids">[] = [];
  const s = config.sets;
  let questions: { id: string; question: string; reference: string | string[] }[] = [];
  if (s.answers) {
    const file = resolvePath(s.answers.path);
    questions = readLines(file, QuestionLine, '{"id", "question", "reference"}', s.answers.limit).map(
      (r) => r.value,
    );
    const sys: TemplateMessage[] = s.answers.system ? [{ role: "system", content: s.answers.system }] : [];
    for (const q of questions) {
      prompts.push({
        set: "answers",
        id: q.id,
        messages: [...sys, { role: "user", content: q.question }],
        thinking: g.thinking,
        rag: false,
        input: q.question,
        reference: Array.isArray(q.reference) ? q.reference[0] : q.reference,
        score: (a) => {
          const sc = scoreAnswer(a.content, q.reference);
          return {
            "answers.exact_match": sc.exact_match,
            "answers.token_f1": sc.token_f1,
            "answers.rouge_l": sc.rouge_l,
          };
        },
      });
    }
    if (s.rag) {
      const index = Bm25Index.fromFolder(resolvePath(s.rag.knowledge), { maxChars: s.rag.max_chars });
      notes.push(
        `rag: BM25 over ${index.passages.length} passages of ${s.rag.knowledge}, top ${s.rag.top_k} in the system prompt`,
      );
      for (const p of prompts.filter((x) => x.set === "answers")) {
        const q = p.input;
        const hits = index.search(q, s.rag.top_k);
        const passages = hits
          .map(
            (h, i) =>
              `[${i + 1}] ${h.passage.file}${h.passage.heading ? ` § ${h.passage.heading}` : ""}\n${h.passage.text}`,
          )
          .join("\n\n");
        const system = [s.answers.system, s.rag.template.replace("{passages}", passages || "(nothing found)")]
          .filter(Boolean)
          .join("\n\n");
        prompts.push({
          ...p,
          rag: true,
          messages: [
            { role: "system", content: system },
            { role: "user", content: q },
          ],
        });
      }
    }
  }
  if (s.tools) {
    const casesFile = resolvePath(s.tools.cases);
    const cases = readLines(
      casesFile,
      BfclCase,
      '{"id", "question": [[{role, content}]], "function": [...]}',
      s.tools.limit,
    );
    const answers = new Map<string, ExpectedCall[]>();
    if (s.tools.answers) {
      for (const { value } of readLines(
        resolvePath(s.tools.answers),
        BfclAnswer,
        '{"id", "ground_truth": [...]}',
      )) {
        answers.set(value.id, value.ground_truth);
      }
    }
    for (const { line, value: c } of cases) {
      const turns = (c as { question?: unknown }).question;
      const first = Array.isArray(turns) && Array.isArray(turns[0]) ? turns[0] : turns;
      const messages = z.array(z.object({ role: z.string(), content: z.string() })).safeParse(first);
      if (!messages.success || messages.data.length === 0) {
        throw new TunaError("EVAL_BAD_LINE", "question must be [[{role, content}, ...]] (BFCL form)", {
          where: at(casesFile, line),
        });
      }
      const tools = c.function.map((f) => ({ type: "function", function: bfclToJsonSchema(f) }));
      const gt = answers.get(c.id);
      const userText = messages.data.map((m) => m.content).join("\n");
      const check = (a: ChatAnswer) =>
        checkCase({ case: c, groundTruth: gt, calls: a.tool_calls, parseErrors: a.errors });
      prompts.push({
        set: "tools",
        id: c.id,
        messages: messages.data,
        tools,
        thinking: g.thinking,
        rag: false,
        input: userText,
        reference: gt === undefined || gt.length === 0 ? "(no call)" : JSON.stringify(gt),
        score: (a) => ({ "tools.correct": check(a).valid ? 1 : 0 }),
        detail: (a) => {
          const r = check(a);
          return r.valid ? { valid: true } : { valid: false, kind: r.kind, message: r.message };
        },
      });
    }
  }
  if (s.general) {
    const file = resolvePath(s.general.path);
    const rows = readLines(file, Gsm8kLine, '{"question", "answer": "… #### <number>"}', s.general.limit);
    for (const { line, value } of rows) {
      if (gsm8kReference(value.answer) === undefined) {
        throw new TunaError("EVAL_BAD_LINE", 'field answer: no "#### <number>" at its end', {
          where: at(file, line),
        });
      }
      prompts.push({
        set: "general",
        id: `gsm8k-${line}`,
        messages: [{ role: "user", content: `${value.question}\n${s.general.instruction}` }],
        thinking: g.thinking,
        rag: false,
        input: value.question,
        reference: String(gsm8kReference(value.answer)),
        score: (a) => ({ "general.gsm8k_accuracy": gsm8kCorrect(a.text, value.answer) ? 1 : 0 }),
      });
    }
  }
  if (s.thinking) {
    const texts = (s.thinking.prompts ?? questions.map((q) => q.question)).slice(0, s.thinking.limit);
    for (const [i, t] of texts.entries()) {
      for (const on of [true, false]) {
        prompts.push({
          set: "thinking",
          id: `${on ? "on" : "off"}-${i}`,
          messages: [{ role: "user", content: t }],
          thinking: on,
          rag: false,
          input: `${t} (thinking ${on ? "on" : "off"})`,
          score: () => ({}), // filled in below: it depends on the rendered prompt
        });
      }
    }
  }
  return prompts.map((p) => {
    const text = chatPrompt(model, p.messages, { tools: p.tools, thinking: p.thinking });
    const out: Prompt = { ...p, text, ids: model.tokenizer.encode(text) };
    if (p.set === "thinking") {
      // Qwen3-2507 thinking templates end the prompt in "<think>\n": the output then carries only </think>.
      const opens = p.thinking && text.trimEnd().endsWith("<think>");
      const key = p.thinking ? "thinking.on_reasoned" : "thinking.off_reasoned";
      out.score = (a) => ({
        [key]: thinkingShape(a.text, { promptOpensThink: opens }) === "reasoned" ? 1 : 0,
      });
    }
    return out;
  });
}

class Progress {
  private started = Date.now();
  private lastLine = 0;
  constructor(
    private readonly total: number,
    private readonly what: string,
    private readonly quiet: boolean,
  ) {}
  update(done: number, tokens: number): void {
    if (this.quiet) return;
    const s = (Date.now() - this.started) / 1000;
    const rate = done / Math.max(s, 1e-3);
    const eta = rate > 0 ? (this.total - done) / rate : Number.NaN;
    const line = `${this.what} ${done}/${this.total} │ ${rate.toFixed(2)}/s │ ${(tokens / Math.max(s, 1e-3)).toFixed(0)} tok/s │ ETA ${formatDuration(eta)}`;
    if (process.stderr.isTTY) process.stderr.write(`\r\x1b[2K${line}${done === this.total ? "\n" : ""}`);
    else if (done === this.total || Date.now() - this.lastLine > 5000) {
      this.lastLine = Date.now();
      process.stderr.write(`${line}\n`);
    }
  }
}

export interface RunEvalOptions {
  outDir: string;
  quiet?: boolean;
  /** Resolved adapters (default: from config.adapters). */
  adapters?: Record<string, string>;
}

export async function runEval(config: EvalConfig, opts: RunEvalOptions): Promise<EvalSummary> {
  const started = Date.now();
  const say = (s: string) => !opts.quiet && process.stderr.write(`${s}\n`);
  const outDir = resolve(opts.outDir);
  mkdirSync(join(outDir, "predictions"), { recursive: true });
  writeFileSync(join(outDir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  const modelDir = resolvePath(config.model);
  const adapters = opts.adapters ?? resolveAdapters(config.adapters);
  const notes: string[] = [];
  const model = await loadChatModel(modelDir);
  const prompts = buildPrompts(config, model, notes);

  const rows: EvalRow[] = [];
  for (const [name, dir] of [[config.base_name, null] as const, ...Object.entries(adapters)]) {
    const adapter = dir === null ? null : name;
    rows.push({ name, adapter, adapterDir: dir, rag: false });
    if (config.sets.rag) rows.push({ name: `${name}+rag`, adapter, adapterDir: dir, rag: true });
  }
  const jobs = rows.flatMap((row) => prompts.filter((p) => p.rag === row.rag).map((p) => ({ row, p })));
  const countBySet: Record<string, number> = {};
  for (const p of prompts) countBySet[p.rag ? "rag" : p.set] = (countBySet[p.rag ? "rag" : p.set] ?? 0) + 1;
  say(
    `eval: ${rows.map((r) => r.name).join(", ")} on ${Object.entries(countBySet)
      .map(([k, v]) => `${v} ${k}`)
      .join(", ")} prompts → ${outDir}`,
  );

  const g = config.generation;
  const gen = await startGenerator({
    modelDir,
    adapters,
    device: config.device,
    dtype: config.dtype,
    maxBatchSize: g.batch_size,
    // Room for the longest prompt and its answer: a long eval prompt is not refused by the engine's 4096 default.
    maxModelLen: prompts.reduce((m, p) => Math.max(m, p.ids.length), 0) + g.max_new_tokens,
  });
  const results: { answer: ChatAnswer; scores: Record<string, number> }[] = new Array(jobs.length);
  const progress = new Progress(jobs.length, "generating", opts.quiet ?? false);
  let tokens = 0;
  try {
    let next = 0;
    let done = 0;
    const stop = new Set(model.stopIds);
    const worker = async () => {
      while (next < jobs.length) {
        const i = next++;
        const { row, p } = jobs[i];
        const r = await gen.generate({
          promptIds: p.ids,
          maxNewTokens: g.max_new_tokens,
          temperature: g.temperature,
          topP: g.top_p,
          topK: g.top_k,
          repetitionPenalty: g.repetition_penalty,
          seed: g.seed,
          stopIds: model.stopIds,
          adapter: row.adapter,
        });
        const ids = r.ids.length > 0 && stop.has(r.ids[r.ids.length - 1]) ? r.ids.slice(0, -1) : r.ids;
        const text = model.tokenizer.decode(ids);
        const parsed = parseQwen3Output(text);
        const answer: ChatAnswer = {
          text,
          content: parsed.content,
          tool_calls: parsed.tool_calls,
          errors: parsed.errors,
          reason: r.reason,
          prompt: p.text,
          promptTokens: r.promptTokens,
          generatedTokens: r.generatedTokens,
          elapsedS: r.elapsedS,
        };
        if (parsed.reasoning !== undefined) answer.reasoning = parsed.reasoning;
        results[i] = { answer, scores: p.score(answer) };
        tokens += r.generatedTokens;
        progress.update(++done, tokens);
      }
    };
    // Twice the batch in flight keeps the engine's batch full while finished answers are scored.
    await Promise.all(Array.from({ length: Math.min(jobs.length, g.batch_size * 2) }, worker));
  } finally {
    await gen.close();
  }

  // The judge scores the answers set (and its +rag twin) of every row.
  const judged = new Map<number, { score: number | null; raw: string }>();
  if (config.judge) {
    const idx = jobs.map((j, i) => ({ j, i })).filter(({ j }) => j.p.set === "answers");
    const jp = new Progress(idx.length, "judging", opts.quiet ?? false);
    const verdicts = await judgeAll(
      config.judge,
      idx.map(({ j, i }) => ({
        question: j.p.input,
        reference: j.p.reference ?? "",
        answer: results[i].answer.content,
      })),
      (d) => jp.update(d, 0),
    );
    let unscored = 0;
    idx.forEach(({ i }, k) => {
      judged.set(i, verdicts[k]);
      if (verdicts[k].score === null) unscored++;
      else results[i].scores["answers.judge"] = verdicts[k].score as number;
    });
    notes.push(
      `judge: ${config.judge.model} at ${config.judge.url}, ${idx.length - unscored}/${idx.length} answers scored (0–1 = score/${config.judge.max_score})`,
    );
  }

  // Rows → metrics, predictions files and the report.
  const modelResults: ModelResult[] = [];
  const summaryModels: EvalSummary["models"] = [];
  const thinking: Record<string, ThinkingCheck> = {};
  for (const row of rows) {
    const mine = jobs.map((j, i) => ({ ...j, i })).filter((j) => j.row === row);
    const metrics: Record<string, number> = {};
    const perKey = new Map<string, number[]>();
    const lines: string[] = [];
    const examples: ModelResult["examples"] = [];
    for (const { p, i } of mine) {
      const { answer, scores } = results[i];
      for (const [k, v] of Object.entries(scores)) perKey.set(k, [...(perKey.get(k) ?? []), v]);
      const pred: Prediction = {
        set: p.rag ? "rag" : p.set,
        id: p.id,
        prompt_sha256: sha(p.text),
        prompt_tokens: p.ids.length,
        text: answer.text,
        content: answer.content,
        tool_calls: toPlain(answer.tool_calls) as unknown[],
        reason: answer.reason,
        generated_tokens: answer.generatedTokens,
        scores,
      };
      if (answer.reasoning !== undefined) pred.reasoning = answer.reasoning;
      if (p.detail) pred.detail = p.detail(answer);
      const j = judged.get(i);
      if (j) pred.judge = j;
      lines.push(JSON.stringify(pred));
      examples.push({
        id: `${p.set}/${p.id}`,
        input: p.input,
        reference: p.reference,
        output: answer.text,
        scores,
      });
    }
    // Aggregates: the mean of each per-example score, renamed where the set names its aggregate.
    for (const [k, vs] of perKey) {
      if (k === "tools.correct") metrics["tools.accuracy"] = mean(vs);
      else if (!k.startsWith("thinking.")) metrics[k] = mean(vs);
    }
    const on = mine.filter((j) => j.p.set === "thinking" && j.p.thinking);
    if (on.length > 0 && config.sets.thinking) {
      const off = mine.filter((j) => j.p.set === "thinking" && !j.p.thinking);
      const check = thinkingCheck(
        { on: on.map((j) => results[j.i].answer.text), off: off.map((j) => results[j.i].answer.text) },
        {
          minOnRate: config.sets.thinking.min_on_rate,
          maxOffRate: config.sets.thinking.max_off_rate,
          promptOpensThink: on[0].p.text.trimEnd().endsWith("<think>"),
        },
      );
      thinking[row.name] = check;
      metrics["thinking.on_rate"] = check.on.rate;
      metrics["thinking.off_rate"] = check.off.rate;
      metrics["thinking.switchable"] = check.switchable ? 1 : 0;
    }
    writeFileSync(
      join(outDir, "predictions", `${row.name}.jsonl`),
      lines.length ? `${lines.join("\n")}\n` : "",
    );
    modelResults.push({ name: row.name, metrics, examples });
    summaryModels.push({ name: row.name, adapter_dir: row.adapterDir, rag: row.rag, metrics });
  }

  const forgetting: EvalSummary["forgetting"] = [];
  if (config.sets.general) {
    const base = summaryModels.find((m) => m.name === config.base_name)!;
    for (const m of summaryModels) {
      if (m.rag || m.adapter_dir === null) continue;
      const v = forgettingGuard(
        base.metrics["general.gsm8k_accuracy"],
        m.metrics["general.gsm8k_accuracy"],
        config.sets.general.max_drop,
      );
      forgetting.push({ model: m.name, ...v });
      m.metrics["general.forgetting_flag"] = v.flagged ? 1 : 0;
      notes.push(`${m.name}: ${v.message}`);
    }
  }
  for (const [name, c] of Object.entries(thinking)) {
    notes.push(
      `${name}: thinking ${c.switchable ? "switchable" : "NOT switchable"} (reasons first: ${(c.on.rate * 100).toFixed(0)}% with it on, ${(c.off.rate * 100).toFixed(0)}% with it off)`,
    );
  }
  const truncated = results.filter((r) => r.answer.reason === "length").length;
  if (truncated > 0)
    notes.push(`${truncated} of ${results.length} answers hit max_new_tokens (${g.max_new_tokens})`);

  const firstAdapter = rows.find((r) => r.adapter !== null && !r.rag);
  const allKeys = modelResults.flatMap((m) => (m.examples ?? []).flatMap((e) => Object.keys(e.scores)));
  writeReport(outDir, {
    title: config.title,
    created: new Date().toISOString(),
    models: modelResults,
    focus: firstAdapter?.name ?? config.base_name,
    rank_metric:
      config.rank_metric ?? (allKeys.includes("answers.token_f1") ? "answers.token_f1" : allKeys[0]),
    worst: config.worst,
    notes,
  });
  const summary: EvalSummary = {
    out_dir: outDir,
    models: summaryModels,
    forgetting,
    thinking,
    prompts: countBySet,
    generated_tokens: tokens,
    elapsed_s: (Date.now() - started) / 1000,
    notes,
  };
  writeFileSync(join(outDir, "summary.json"), `${JSON.stringify(summary, null, 2)}\n`);
  say(`eval: done in ${formatDuration(summary.elapsed_s)}; report ${join(outDir, "report.md")}`);
  return summary;
}

/** Reads predictions/<row>.jsonl back (tests, sweeps). */
export function readPredictions(outDir: string, row: string): Prediction[] {
  return readFileSync(join(outDir, "predictions", `${row}.jsonl`), "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as Prediction);
}

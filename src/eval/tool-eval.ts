// `tuna eval tools`: BFCL-format cases + answers + predictions (calls or raw Qwen3 text) → accuracy and
// counts per error kind. Files are JSON lines; every problem with a line names the file and line.
import { readFileSync } from "node:fs";
import { z } from "zod";
import { at, TunaError } from "../errors.ts";
import {
  BfclAnswer,
  BfclCase,
  type CheckOptions,
  type CheckResult,
  categoryOf,
  checkCase,
  type ErrorKind,
  type ExpectedCall,
} from "./bfcl.ts";
import { isPlainObject, PyJsonError, parsePyJson, toPlain } from "./pyjson.ts";
import { type ParsedCall, type ParseIssue, parseQwen3Output } from "./qwen3-output.ts";

/** A prediction: the calls a model made (empty = no call), or its raw output text to parse as Qwen3 output. */
export const ToolPrediction = z.union([
  z.object({ id: z.string().min(1), tool_calls: z.array(z.unknown()) }),
  z.object({ id: z.string().min(1), text: z.string() }),
]);
export type ToolPrediction = z.infer<typeof ToolPrediction>;

export interface CaseScore {
  id: string;
  category: string;
  correct: boolean;
  kind?: ErrorKind;
  detail?: string;
  message?: string;
}

export interface ToolEvalResult {
  accuracy: number;
  total: number;
  correct: number;
  /** Failed cases per error kind. */
  errors: Partial<Record<ErrorKind, number>>;
  by_category: Record<string, { total: number; correct: number; accuracy: number }>;
  per_case?: CaseScore[];
}

/** Reads a JSON-lines file with Python number semantics; blank lines are skipped. */
export function readJsonLines(file: string): { line: number; value: unknown }[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new TunaError("EVAL_FILE", `cannot read ${file}: ${(e as Error).message}`, {
      hint: "check the path",
      cause: e,
    });
  }
  const out: { line: number; value: unknown }[] = [];
  for (const [i, raw] of text.split("\n").entries()) {
    if (raw.trim() === "") continue;
    try {
      out.push({ line: i + 1, value: parsePyJson(raw) });
    } catch (e) {
      if (!(e instanceof PyJsonError)) throw e;
      throw new TunaError("EVAL_BAD_JSON", `not JSON: ${e.message}`, {
        where: at(file, i + 1),
        hint: "each line must be one JSON object",
      });
    }
  }
  return out;
}

function parseLines<T>(file: string, schema: z.ZodType<T>, what: string): { line: number; value: T }[] {
  return readJsonLines(file).map(({ line, value }) => {
    const r = schema.safeParse(value);
    if (!r.success) {
      const issue = r.error.issues[0];
      const field = issue.path.join(".") || "(line)";
      throw new TunaError("EVAL_BAD_LINE", `${what}: field ${field}: ${issue.message}`, {
        where: at(file, line),
        hint: `a ${what} line looks like ${
          what === "case"
            ? '{"id", "question", "function": [{"name", "parameters"}]}'
            : what === "answer"
              ? '{"id", "ground_truth": [{"fn": {"arg": [allowed values]}}]}'
              : '{"id", "tool_calls": [{"name", "arguments"}]} or {"id", "text"}'
        }`,
      });
    }
    return { line, value: r.data };
  });
}

function indexById<T extends { id: string }>(
  file: string,
  rows: { line: number; value: T }[],
): Map<string, T> {
  const m = new Map<string, T>();
  const seen = new Map<string, number>();
  for (const { line, value } of rows) {
    const prev = seen.get(value.id);
    if (prev !== undefined) {
      throw new TunaError(
        "EVAL_DUPLICATE_ID",
        `id ${JSON.stringify(value.id)} appears again (first at line ${prev})`,
        {
          where: at(file, line),
        },
      );
    }
    seen.set(value.id, line);
    m.set(value.id, value);
  }
  return m;
}

/** A prediction's calls: given calls are checked for shape (a broken one is a parse issue, as a model's
 * output); OpenAI-style string arguments are parsed; raw text goes through the Qwen3 parser. */
export function predictionCalls(p: ToolPrediction): { calls: ParsedCall[]; errors: ParseIssue[] } {
  if ("text" in p) {
    const parsed = parseQwen3Output(p.text);
    return { calls: parsed.tool_calls, errors: parsed.errors };
  }
  const calls: ParsedCall[] = [];
  const errors: ParseIssue[] = [];
  for (const [i, c] of p.tool_calls.entries()) {
    // {"function": {...}} (OpenAI message form) is unwrapped.
    const call = isPlainObject(c) && isPlainObject(c.function) ? c.function : c;
    if (!isPlainObject(call)) {
      errors.push({ kind: "not_object", block: i, message: `tool_calls[${i}] is not an object` });
    } else if (typeof call.name !== "string" || call.name === "") {
      errors.push({ kind: "missing_name", block: i, message: `tool_calls[${i}] has no "name" string` });
    } else {
      let args: unknown = call.arguments === undefined ? {} : call.arguments;
      if (typeof args === "string") {
        try {
          args = parsePyJson(args);
        } catch (e) {
          if (!(e instanceof PyJsonError)) throw e;
          const kind = e.truncated ? "truncated_json" : "invalid_json";
          errors.push({ kind, block: i, message: `tool_calls[${i}].arguments: ${e.message}` });
          continue;
        }
      }
      if (isPlainObject(args)) calls.push({ name: call.name, arguments: args });
      else
        errors.push({
          kind: "arguments_not_object",
          block: i,
          message: `tool_calls[${i}].arguments is not an object`,
        });
    }
  }
  return { calls, errors };
}

export interface ToolEvalFiles {
  cases: string;
  /** Optional: without it every case is an irrelevance case. */
  answers?: string;
  predictions: string;
}

export function scoreToolFiles(
  files: ToolEvalFiles,
  opts: CheckOptions & { details?: boolean } = {},
): ToolEvalResult {
  const cases = parseLines(files.cases, BfclCase, "case");
  const answers = files.answers
    ? indexById(files.answers, parseLines(files.answers, BfclAnswer, "answer"))
    : new Map();
  const predRows = parseLines(files.predictions, ToolPrediction, "prediction");
  const preds = indexById(files.predictions, predRows);
  const caseIds = new Set(cases.map((c) => c.value.id));
  for (const { line, value } of predRows) {
    if (!caseIds.has(value.id)) {
      throw new TunaError(
        "EVAL_UNKNOWN_ID",
        `prediction for ${JSON.stringify(value.id)}, which is not a case`,
        {
          where: at(files.predictions, line),
          hint: `check that --predictions and --cases (${files.cases}) are the same benchmark`,
        },
      );
    }
  }
  for (const id of answers.keys()) {
    if (!caseIds.has(id)) {
      throw new TunaError("EVAL_UNKNOWN_ID", `answer for ${JSON.stringify(id)}, which is not a case`, {
        where: files.answers,
        hint: "check that --answers and --cases are the same benchmark",
      });
    }
  }
  const scores: CaseScore[] = [];
  for (const { value: c } of cases) {
    const p = preds.get(c.id);
    const { calls, errors } = p ? predictionCalls(p) : { calls: undefined, errors: [] };
    const gt: ExpectedCall[] | undefined = answers.get(c.id)?.ground_truth;
    const r: CheckResult = checkCase({ case: c, groundTruth: gt, calls, parseErrors: errors }, opts);
    scores.push(
      r.valid
        ? { id: c.id, category: categoryOf(c.id), correct: true }
        : {
            id: c.id,
            category: categoryOf(c.id),
            correct: false,
            kind: r.kind,
            detail: r.detail,
            message: r.message,
          },
    );
  }
  return summarize(scores, opts.details ?? false);
}

export function summarize(scores: CaseScore[], details: boolean): ToolEvalResult {
  const errors: Partial<Record<ErrorKind, number>> = {};
  const by_category: ToolEvalResult["by_category"] = {};
  let correct = 0;
  for (const s of scores) {
    by_category[s.category] ??= { total: 0, correct: 0, accuracy: 0 };
    const cat = by_category[s.category];
    cat.total++;
    if (s.correct) {
      correct++;
      cat.correct++;
    } else if (s.kind) errors[s.kind] = (errors[s.kind] ?? 0) + 1;
  }
  for (const c of Object.values(by_category)) c.accuracy = c.total ? c.correct / c.total : 0;
  const out: ToolEvalResult = {
    accuracy: scores.length ? correct / scores.length : 0,
    total: scores.length,
    correct,
    errors,
    by_category,
  };
  if (details) out.per_case = scores.map((s) => toPlain(s) as CaseScore);
  return out;
}

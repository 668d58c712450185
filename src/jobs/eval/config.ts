// The eval config (`tuna eval <config.yaml>`): which models, which held-out sets, how to generate, and the
// optional LLM judge. docs/eval-config.md documents every field; defaults live here and nowhere else.
import { z } from "zod";
import { parseConfig, readYaml } from "../../config/load.ts";
import { TunaError } from "../../errors.ts";

export const GenerationConfig = z
  .object({
    max_new_tokens: z.number().int().positive().default(256),
    /** 0 = greedy (the default: evaluations should be repeatable). */
    temperature: z.number().min(0).default(0),
    top_p: z.number().gt(0).max(1).default(1),
    top_k: z.number().int().min(0).default(0),
    repetition_penalty: z.number().positive().default(1),
    seed: z.number().int().default(0),
    /** Thinking mode of the answers, tools, general and rag sets (the thinking check sets its own). */
    thinking: z.boolean().default(false),
    /** Requests the engine decodes together at most. */
    batch_size: z.number().int().positive().default(8),
  })
  .strict();

const Limit = z.number().int().positive().optional();

export const AnswersSet = z
  .object({
    /** JSON lines {id, question, reference} (reference: a string or a list of accepted answers). */
    path: z.string().min(1),
    limit: Limit,
    /** System prompt for these questions (and for the rag rows). */
    system: z.string().optional(),
  })
  .strict();

export const ToolsSet = z
  .object({
    /** BFCL-form cases {id, question: [[{role, content}]], function: [...]}. */
    cases: z.string().min(1),
    /** BFCL-form answers {id, ground_truth}; a case without one expects no call. */
    answers: z.string().min(1).optional(),
    limit: Limit,
  })
  .strict();

export const GeneralSet = z
  .object({
    /** GSM8K JSON lines {question, answer} (answer ends in "#### <number>"). */
    path: z.string().min(1),
    limit: Limit,
    /** Largest allowed accuracy drop of a tuned model below the base model (absolute, 0–1) before it is flagged. */
    max_drop: z.number().min(0).max(1).default(0.05),
    /** Appended to each question (Qwen's usual maths instruction). */
    instruction: z
      .string()
      .default("Please reason step by step, and put your final answer within \\boxed{}."),
  })
  .strict();

export const ThinkingSet = z
  .object({
    /** Prompts asked with thinking on and with it off; default: the first questions of the answers set. */
    prompts: z.array(z.string().min(1)).min(1).optional(),
    limit: z.number().int().positive().default(4),
    min_on_rate: z.number().min(0).max(1).default(0.9),
    max_off_rate: z.number().min(0).max(1).default(0.1),
  })
  .strict();

export const RagSet = z
  .object({
    /** Folder of .md/.txt knowledge documents, searched with BM25 for each question of the answers set. */
    knowledge: z.string().min(1),
    top_k: z.number().int().positive().default(3),
    max_chars: z.number().int().min(20).default(800),
    /** How the retrieved passages go into the system prompt; {passages} is replaced by them. */
    template: z
      .string()
      .default(
        "Answer the customer's question using these passages from our policy documents:\n\n{passages}",
      ),
  })
  .strict();

export const JudgeConfig = z
  .object({
    /** Base URL of an OpenAI-compatible API (…/v1); POST {url}/chat/completions. */
    url: z.string().url(),
    model: z.string().min(1),
    /** Name of the environment variable holding the API key (sent as a Bearer token when set). */
    api_key_env: z.string().min(1).optional(),
    /** What a good answer is; the judge replies with "SCORE: <0..max_score>". */
    rubric: z.string().min(1),
    max_score: z.number().positive().default(5),
    /** Requests to the judge at once. */
    concurrency: z.number().int().positive().default(4),
    timeout_s: z.number().positive().default(60),
  })
  .strict();

export const EvalConfig = z
  .object({
    /** The base model directory. */
    model: z.string().min(1),
    /** Tuned models: name → run directory (runs/<id>) or adapter directory; a list names them by folder. */
    adapters: z
      .union([z.record(z.string().regex(/^[A-Za-z0-9_.-]+$/), z.string().min(1)), z.array(z.string().min(1))])
      .default({}),
    /** Name of the base model's rows. */
    base_name: z
      .string()
      .regex(/^[A-Za-z0-9_.-]+$/)
      .default("base"),
    sets: z
      .object({
        answers: AnswersSet.optional(),
        tools: ToolsSet.optional(),
        general: GeneralSet.optional(),
        thinking: ThinkingSet.optional(),
        rag: RagSet.optional(),
      })
      .strict()
      .refine((s) => Object.values(s).some((v) => v !== undefined), { message: "name at least one set" })
      .refine((s) => s.rag === undefined || s.answers !== undefined, {
        message: "rag asks the answers set's questions: add sets.answers",
      })
      .refine(
        (s) => s.thinking?.prompts !== undefined || s.thinking === undefined || s.answers !== undefined,
        {
          message: "thinking needs prompts, or an answers set to take them from",
        },
      ),
    generation: GenerationConfig.prefault({}),
    judge: JudgeConfig.optional(),
    device: z.enum(["auto", "cpu", "cuda"]).default("auto"),
    dtype: z.enum(["auto", "float32", "bfloat16", "float16"]).default("auto"),
    /** Metric whose worst examples the report shows (default answers.token_f1, else the first one). */
    rank_metric: z.string().optional(),
    /** Examples shown in the report's worst-examples table. */
    worst: z.number().int().min(0).default(8),
    title: z.string().default("Evaluation"),
  })
  .strict();
export type EvalConfig = z.infer<typeof EvalConfig>;
export type EvalConfigInput = z.input<typeof EvalConfig>;

/** Reads and validates an eval config file; every problem is listed with its line. */
export function loadEvalConfig(file: string): EvalConfig {
  return withDocsHint(() => parseConfig(EvalConfig, readYaml(file), file), "docs/eval-config.md");
}

/** parseConfig's hint names the run config's docs; point at the right page. */
export function withDocsHint<T>(f: () => T, doc: string): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof TunaError && e.code === "CONFIG_INVALID") {
      throw new TunaError(e.code, e.message.slice(e.where ? e.where.length + 2 : 0), {
        where: e.where,
        hint: `see ${doc} for every field, its default and what it allows`,
      });
    }
    throw e;
  }
}

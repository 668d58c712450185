// The generation client: one long-lived `python -m tuna_engine generate --plan plan.json` process, many
// requests in flight at once (the engine batches them), token ids streamed back (DESIGN.md "One seam").
//
//   const gen = await startGenerator({ modelDir, adapters: { tuned: "runs/x/adapter" } });  // after `ready`
//   const r = await gen.generate({ promptIds, maxNewTokens: 64, adapter: "tuned" }, (ids) => ...);
//   gen.cancel(r.id); await gen.close();
//
// The text side lives here too, so chat, eval and serve share it: `chatOnce` renders messages with the model's
// own template, encodes, generates until the template's end-of-turn token, decodes and parses the Qwen3 output;
// `StreamDecoder` turns streamed ids into text without splitting a multi-byte character across two pieces.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { z } from "zod";
import { TunaError } from "../errors.ts";
import { type ParsedCall, type ParseIssue, parseQwen3Output } from "../eval/qwen3-output.ts";
import { type ChatTemplate, loadChatTemplate } from "../template/load.ts";
import { renderChat, type TemplateMessage } from "../template/render.ts";
import { loadTokenizer } from "../tokenizer/index.ts";
import type { Tokenizer } from "../tokenizer/types.ts";
import {
  ErrorEvent,
  FinishedEvent,
  GeneratePlan,
  GenerateRequest,
  LogEvent,
  PROTOCOL_VERSION,
  ReadyEvent,
  TokenEvent,
} from "./protocol.ts";
import { type EngineRun, startEngine } from "./runner.ts";

// An error event may name the request it belongs to (a bad request); without `id` it concerns the whole engine.
const RequestErrorEvent = ErrorEvent.extend({ id: z.string().optional() });
const ClientEvent = z.discriminatedUnion("event", [
  ReadyEvent,
  TokenEvent,
  FinishedEvent,
  RequestErrorEvent,
  LogEvent,
]);
type ClientEvent = z.infer<typeof ClientEvent>;

export interface GeneratorOptions {
  modelDir: string;
  /** LoRA adapters (PEFT directories) by name; a request picks one with `adapter`. */
  adapters?: Record<string, string>;
  device?: "auto" | "cpu" | "cuda";
  /** auto = bfloat16 on CUDA, float32 on CPU. */
  dtype?: "auto" | "float32" | "bfloat16" | "float16";
  /** Requests decoded together at most (default 8). */
  maxBatchSize?: number;
  /** KV cache positions per request: the longest prompt + max new tokens (engine default 4096). */
  maxModelLen?: number;
  /** Decode path (engine default auto), the fused decode layer, its torch.compile: plan fields. */
  mode?: "auto" | "graph" | "eager" | "reference";
  fused?: boolean;
  compile?: boolean;
  /** Where plan.json (and events.jsonl when `keepEvents`) go; default a temporary folder removed on close. */
  workDir?: string;
  keepEvents?: boolean;
  /** The engine's human log (stderr); default: kept as a tail for error messages only. */
  onStderr?: (chunk: string) => void;
  onLog?: (message: string) => void;
  env?: Record<string, string>;
}

export interface GenerateOptions {
  promptIds: ArrayLike<number>;
  maxNewTokens: number;
  /** 0 = greedy (the default). */
  temperature?: number;
  topP?: number;
  /** 0 = off. */
  topK?: number;
  repetitionPenalty?: number;
  seed?: number | null;
  /** Generation stops after emitting one of these (included in `ids`). */
  stopIds?: readonly number[];
  /** Name of an adapter given to startGenerator; null/undefined = the base model. */
  adapter?: string | null;
  /** Request id (default: a counter). */
  id?: string;
}

export interface GenerateResult {
  id: string;
  /** Generated ids, the stop id included when reason is "stop". */
  ids: number[];
  reason: "stop" | "length" | "cancelled";
  promptTokens: number;
  generatedTokens: number;
  elapsedS: number;
}

export interface Generator {
  readonly device: string;
  readonly dtype: string;
  readonly adapters: readonly string[];
  /** `onTokens(newIds, allIds)` is called for every token event of this request. */
  generate(
    opts: GenerateOptions,
    onTokens?: (newIds: number[], allIds: number[]) => void,
  ): Promise<GenerateResult>;
  /** Stop a request; its promise resolves with reason "cancelled" (or however it ended, if it already had). */
  cancel(id: string): void;
  /** Ids of requests still running. */
  inFlight(): string[];
  /** Ends the engine (stdin closed; killed if it does not exit within `graceMs`). */
  close(graceMs?: number): Promise<void>;
}

interface Pending {
  ids: number[];
  resolve: (r: GenerateResult) => void;
  reject: (e: Error) => void;
  onTokens?: (newIds: number[], allIds: number[]) => void;
}

function engineError(e: { code: string; message: string; hint?: string }, what: string): TunaError {
  return new TunaError(e.code, `${what}: ${e.message}`, { hint: e.hint });
}

function crashError(r: {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderrTail: string;
}): TunaError {
  const tail = r.stderrTail.trim().split("\n").slice(-15).join("\n");
  return new TunaError(
    "ENGINE_CRASHED",
    `the generation engine exited with ${r.code ?? r.signal} without an error event${tail ? `; its last output:\n${tail}` : ""}`,
    { hint: "set TUNA_ENGINE_LOG=1 to see the engine's log" },
  );
}

/** Starts the engine and resolves once it has loaded the model (its `ready` event). */
export async function startGenerator(opts: GeneratorOptions): Promise<Generator> {
  const modelDir = resolve(opts.modelDir);
  if (!existsSync(join(modelDir, "config.json"))) {
    throw new TunaError("MODEL_NOT_FOUND", `${modelDir} is not a model directory (no config.json)`, {
      hint: "pass a Hugging Face model directory, e.g. one made by `tuna model init <dir> --preset tiny`",
    });
  }
  const adapters: Record<string, string> = {};
  for (const [name, dir] of Object.entries(opts.adapters ?? {})) {
    const abs = resolve(dir);
    if (!existsSync(join(abs, "adapter_config.json"))) {
      throw new TunaError("ADAPTER_NOT_FOUND", `adapter "${name}": ${abs} has no adapter_config.json`, {
        hint: "pass a PEFT adapter directory (runs/<id>/adapter) or a run directory",
      });
    }
    adapters[name] = abs;
  }
  const device = opts.device ?? "auto";
  const dtype =
    opts.dtype === undefined || opts.dtype === "auto"
      ? device === "cuda"
        ? "bfloat16"
        : "float32"
      : opts.dtype;
  const ownDir = opts.workDir === undefined;
  const workDir = opts.workDir ?? mkdtempSync(join(tmpdir(), "tuna-generate-"));
  mkdirSync(workDir, { recursive: true });
  const plan: GeneratePlan = GeneratePlan.parse({
    version: PROTOCOL_VERSION,
    command: "generate",
    model: { path: modelDir, dtype },
    adapters,
    device,
    max_batch_size: opts.maxBatchSize ?? 8,
    max_model_len: opts.maxModelLen,
    mode: opts.mode,
    fused: opts.fused,
    compile: opts.compile,
  });
  const planPath = join(workDir, "generate_plan.json");
  writeFileSync(planPath, `${JSON.stringify(plan, null, 2)}\n`);

  const pending = new Map<string, Pending>();
  let fatal: TunaError | undefined;
  let ready: z.infer<typeof ReadyEvent> | undefined;
  let onReady: ((e: z.infer<typeof ReadyEvent>) => void) | undefined;

  const failAll = (err: TunaError) => {
    fatal ??= err;
    for (const [id, p] of pending) {
      pending.delete(id);
      p.reject(err);
    }
  };

  const onEvent = (e: ClientEvent) => {
    switch (e.event) {
      case "ready":
        ready = e;
        onReady?.(e);
        break;
      case "token": {
        const p = pending.get(e.id);
        if (!p) break; // a late token of a request already settled
        p.ids.push(...e.token_ids);
        p.onTokens?.(e.token_ids, p.ids);
        break;
      }
      case "finished": {
        const p = pending.get(e.id);
        if (!p) break;
        pending.delete(e.id);
        p.resolve({
          id: e.id,
          ids: p.ids,
          reason: e.reason,
          promptTokens: e.prompt_tokens,
          generatedTokens: e.generated_tokens,
          elapsedS: e.elapsed_s,
        });
        break;
      }
      case "error": {
        const p = e.id === undefined ? undefined : pending.get(e.id);
        if (p && e.id !== undefined) {
          pending.delete(e.id);
          p.reject(engineError(e, `generation request ${e.id}`));
        } else failAll(engineError(e, "the generation engine failed"));
        break;
      }
      case "log":
        opts.onLog?.(e.message);
        break;
    }
  };

  let engine: EngineRun;
  engine = startEngine<ClientEvent>({
    command: "generate",
    schema: ClientEvent,
    planPath,
    eventsPath: opts.keepEvents ? join(workDir, "events.jsonl") : undefined,
    onEvent,
    onStderr: opts.onStderr ?? (process.env.TUNA_ENGINE_LOG ? (c) => process.stderr.write(c) : undefined),
    env: opts.env,
  });
  // Writing to a closed stdin (engine died) must not crash this process: the exit is reported instead.
  engine.child.stdin?.on("error", () => {});

  let exited = false;
  const exit = engine.done.then(
    (r) => {
      exited = true;
      failAll(r.error ? engineError(r.error, "the generation engine stopped") : crashError(r));
      return r;
    },
    (err: unknown) => {
      exited = true;
      failAll(err instanceof TunaError ? err : new TunaError("ENGINE_SPAWN", String(err)));
      return undefined;
    },
  );

  const readyEvent = await new Promise<z.infer<typeof ReadyEvent>>((res, rej) => {
    if (ready) return res(ready);
    onReady = res;
    void exit.then(() => {
      if (!ready)
        rej(fatal ?? new TunaError("ENGINE_CRASHED", "the generation engine exited before it was ready"));
    });
  });

  let counter = 0;
  const cleanup = () => {
    if (ownDir) rmSync(workDir, { recursive: true, force: true });
  };

  return {
    device: readyEvent.device,
    dtype: readyEvent.dtype,
    adapters: Object.keys(adapters),
    generate(g, onTokens) {
      if (fatal) return Promise.reject(fatal);
      const id = g.id ?? `r${++counter}`;
      if (pending.has(id)) {
        return Promise.reject(
          new TunaError("GENERATE_DUPLICATE_ID", `request id "${id}" is already in flight`),
        );
      }
      if (g.adapter != null && !(g.adapter in adapters)) {
        return Promise.reject(
          new TunaError(
            "ADAPTER_NOT_FOUND",
            `no adapter named "${g.adapter}" (loaded: ${Object.keys(adapters).join(", ") || "none"})`,
            {
              hint: "name it in startGenerator's adapters",
            },
          ),
        );
      }
      const request = GenerateRequest.safeParse({
        type: "generate",
        id,
        prompt_ids: Array.from(g.promptIds),
        max_new_tokens: g.maxNewTokens,
        temperature: g.temperature ?? 0,
        top_p: g.topP ?? 1,
        top_k: g.topK ?? 0,
        repetition_penalty: g.repetitionPenalty ?? 1,
        seed: g.seed ?? null,
        stop_ids: [...(g.stopIds ?? [])],
        adapter: g.adapter ?? null,
      });
      if (!request.success) {
        const issue = request.error.issues[0];
        return Promise.reject(
          new TunaError("GENERATE_BAD_REQUEST", `field ${issue.path.join(".")}: ${issue.message}`, {
            hint: "prompt_ids must be non-empty, max_new_tokens ≥ 1, temperature ≥ 0, 0 < top_p ≤ 1",
          }),
        );
      }
      return new Promise<GenerateResult>((res, rej) => {
        pending.set(id, { ids: [], resolve: res, reject: rej, onTokens });
        engine.send(request.data);
      });
    },
    cancel(id) {
      if (pending.has(id) && !exited) engine.send({ type: "cancel", id });
    },
    inFlight: () => [...pending.keys()],
    async close(graceMs = 5000) {
      if (!exited) {
        engine.close();
        const timer = setTimeout(() => engine.child.kill("SIGKILL"), graceMs);
        await exit;
        clearTimeout(timer);
      }
      // A request still open after a clean exit will never finish.
      failAll(new TunaError("GENERATOR_CLOSED", "the generator was closed while requests were in flight"));
      cleanup();
    },
  };
}

// ---- text ------------------------------------------------------------------------------------------------

/**
 * Streamed ids → text pieces. A byte-level BPE token may hold part of a UTF-8 character, which decodes to
 * U+FFFD until the rest arrives; such a piece is held back (the prefix/read offsets of HF text-generation-
 * inference's `decode_token`, so the work per token stays constant).
 */
export class StreamDecoder {
  private ids: number[] = [];
  private prefix = 0;
  private read = 0;
  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly opts: { skipSpecialTokens?: boolean } = {},
  ) {}

  push(newIds: readonly number[]): string {
    this.ids.push(...newIds);
    const before = this.tokenizer.decode(this.ids.slice(this.prefix, this.read), this.opts);
    const after = this.tokenizer.decode(this.ids.slice(this.prefix), this.opts);
    if (after.length > before.length && !after.endsWith("\uFFFD")) {
      this.prefix = this.read;
      this.read = this.ids.length;
      return after.slice(before.length);
    }
    return "";
  }

  /** Whatever is held back (an incomplete character stays U+FFFD). */
  flush(): string {
    const before = this.tokenizer.decode(this.ids.slice(this.prefix, this.read), this.opts);
    const after = this.tokenizer.decode(this.ids.slice(this.prefix), this.opts);
    this.prefix = this.read = this.ids.length;
    return after.slice(before.length);
  }
}

/** What chat and eval need of a model directory: its template, tokenizer and end-of-turn ids. */
export interface ChatModel {
  dir: string;
  template: ChatTemplate;
  tokenizer: Tokenizer;
  /** Ids that end an answer: the template's eos (`<|im_end|>`) and generation_config.json's eos_token_id. */
  stopIds: number[];
}

export async function loadChatModel(modelDir: string): Promise<ChatModel> {
  const template = loadChatTemplate(modelDir);
  const tokenizer = await loadTokenizer(modelDir);
  const stop = new Set<number>();
  const eos = template.eosToken === undefined ? undefined : tokenizer.tokenToId(template.eosToken);
  if (eos !== undefined) stop.add(eos);
  const genConfig = join(modelDir, "generation_config.json");
  if (existsSync(genConfig)) {
    try {
      const v = JSON.parse(readFileSync(genConfig, "utf8")).eos_token_id as unknown;
      for (const id of Array.isArray(v) ? v : [v]) if (Number.isInteger(id)) stop.add(id as number);
    } catch {
      // generation_config.json is optional metadata; a broken one leaves the template's eos as the stop.
    }
  }
  if (stop.size === 0) {
    throw new TunaError(
      "TEMPLATE_NO_EOS",
      `no end-of-turn token for ${modelDir}: tokenizer_config.json sets no eos_token`,
      {
        where: template.path,
        hint: 'set "eos_token" (e.g. "<|im_end|>") in tokenizer_config.json',
      },
    );
  }
  return { dir: modelDir, template, tokenizer, stopIds: [...stop] };
}

export interface Sampling {
  maxNewTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  seed?: number | null;
}

export interface ChatOnceOptions {
  gen: Generator;
  model: ChatModel;
  messages: readonly TemplateMessage[];
  /** OpenAI-form function tools. */
  tools?: readonly unknown[];
  /** Qwen3 enable_thinking; undefined = the template's default. */
  thinking?: boolean;
  adapter?: string | null;
  sampling: Sampling;
  /** Streamed text pieces (decoded incrementally, special tokens kept). */
  onText?: (piece: string) => void;
  /** Receives the request id as soon as it is sent (for cancel). */
  onStart?: (id: string) => void;
  id?: string;
}

export interface ChatAnswer {
  /** Raw generated text (tags included), without the final end-of-turn token. */
  text: string;
  reasoning?: string;
  content: string;
  tool_calls: ParsedCall[];
  errors: ParseIssue[];
  reason: GenerateResult["reason"];
  prompt: string;
  promptTokens: number;
  generatedTokens: number;
  elapsedS: number;
}

/** Renders the prompt of `messages` (add_generation_prompt) as chatOnce sends it. */
export function chatPrompt(
  model: ChatModel,
  messages: readonly TemplateMessage[],
  opts: { tools?: readonly unknown[]; thinking?: boolean } = {},
): string {
  return renderChat(model.template, messages, {
    addGenerationPrompt: true,
    enableThinking: opts.thinking,
    tools: opts.tools && opts.tools.length > 0 ? opts.tools : undefined,
  });
}

/** messages → template → ids → generate → text → Qwen3 parse. */
export async function chatOnce(o: ChatOnceOptions): Promise<ChatAnswer> {
  const prompt = chatPrompt(o.model, o.messages, { tools: o.tools, thinking: o.thinking });
  const promptIds = o.model.tokenizer.encode(prompt);
  const decoder = o.onText ? new StreamDecoder(o.model.tokenizer) : undefined;
  const stop = new Set(o.model.stopIds);
  const id = o.id ?? `chat-${Math.random().toString(36).slice(2, 10)}`;
  const pending = o.gen.generate(
    { ...o.sampling, promptIds, stopIds: o.model.stopIds, adapter: o.adapter ?? null, id },
    decoder
      ? (newIds) => {
          const shown = newIds.filter((t) => !stop.has(t));
          const piece = decoder.push(shown);
          if (piece) o.onText?.(piece);
        }
      : undefined,
  );
  o.onStart?.(id);
  const r = await pending;
  if (decoder) {
    const rest = decoder.flush();
    if (rest) o.onText?.(rest);
  }
  const ids = r.ids.length > 0 && stop.has(r.ids[r.ids.length - 1]) ? r.ids.slice(0, -1) : r.ids;
  const text = o.model.tokenizer.decode(ids);
  const parsed = parseQwen3Output(text);
  const out: ChatAnswer = {
    text,
    content: parsed.content,
    tool_calls: parsed.tool_calls,
    errors: parsed.errors,
    reason: r.reason,
    prompt,
    promptTokens: r.promptTokens,
    generatedTokens: r.generatedTokens,
    elapsedS: r.elapsedS,
  };
  if (parsed.reasoning !== undefined) out.reasoning = parsed.reasoning;
  return out;
}

/**
 * Where the adapter of `dir` is: `dir` itself when it holds adapter_config.json, `dir/adapter` for a run
 * directory; else a TunaError.
 */
export function resolveAdapterDir(dir: string): string {
  const abs = resolve(dir);
  if (existsSync(join(abs, "adapter_config.json"))) return abs;
  if (existsSync(join(abs, "adapter", "adapter_config.json"))) return join(abs, "adapter");
  throw new TunaError(
    "ADAPTER_NOT_FOUND",
    `${abs} is neither an adapter directory nor a run directory with adapter/`,
    {
      hint: "pass runs/<id> (after `tuna train` finished) or a PEFT adapter directory with adapter_config.json",
    },
  );
}

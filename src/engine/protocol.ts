// The one seam between TypeScript and the engine (DESIGN.md "Shape"): TypeScript writes a plan.json, starts
// `python -m tuna_engine <command> --plan plan.json`, and reads one JSON event per line from its stdout.
// engine/tuna_engine/protocol.py is the other half of this file; test/protocol.test.ts checks they agree.
import { z } from "zod";

export const PROTOCOL_VERSION = 1;

export const LoraSpec = z.object({
  r: z.number().int().positive(),
  alpha: z.number().positive(),
  dropout: z.number().min(0).max(1),
  /** Projection names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or ["all-linear"]. */
  target_modules: z.array(z.string()).min(1),
  use_rslora: z.boolean(),
  use_dora: z.boolean(),
});

export const DistributedPlan = z.object({
  /** auto: resolved by the engine (ddp when a replica fits half a GPU, else fsdp); start events name the result. */
  strategy: z.enum(["auto", "fsdp", "ddp"]),
  /** Processes (GPUs) per node. */
  gpus: z.number().int().min(1),
  nnodes: z.number().int().min(1),
  node_rank: z.number().int().min(0),
  master_addr: z.string().min(1),
  master_port: z.number().int().min(1).max(65535),
});
export type DistributedPlan = z.infer<typeof DistributedPlan>;

export const TrainPlan = z.object({
  version: z.literal(PROTOCOL_VERSION),
  command: z.literal("train"),
  run_dir: z.string(),
  model: z.object({
    path: z.string(),
    /** Training dtype of the frozen weights and activations; norms, softmax and loss run in fp32. */
    dtype: z.enum(["float32", "bfloat16", "float16"]),
  }),
  data: z.object({
    /** Shard files (safetensors) in order; see docs/formats.md "Token shards". */
    train: z.array(z.string()).min(1),
    validation: z.array(z.string()),
    manifest: z.string(),
  }),
  method: z.object({
    type: z.enum(["lora", "qlora", "full"]),
    lora: LoraSpec.optional(),
    /** Freezing. LoRA: adapters only on these decoder layers (peft layers_to_transform). Full: only these
     * layers' parameters train. Absent/null = all layers. */
    trainable_layers: z.array(z.number().int().min(0)).nullable().optional(),
    /** Full fine-tuning only: train only parameters under these module names (embed_tokens, self_attn, q_proj,
     * mlp, gate_proj, norm, lm_head, ...). Absent/null = all modules. */
    trainable_modules: z.array(z.string()).nullable().optional(),
    /** QLoRA only: decoder projections that keep 16-bit weights, named by module path or a dotted part of it
     * ("layers.0.mlp.down_proj", "o_proj", "mlp"), as transformers' llm_int8_skip_modules. Embeddings, norms
     * and lm_head are always 16-bit. Absent/null = every projection is 4-bit NF4. */
    keep_16bit: z.array(z.string()).nullable().optional(),
  }),
  train: z.object({
    seed: z.number().int(),
    /** Packs per micro-batch. */
    micro_batch_size: z.number().int().positive(),
    grad_accum: z.number().int().positive(),
    /** Total optimizer steps (TypeScript computes it from epochs and the pack count). */
    max_steps: z.number().int().positive(),
    learning_rate: z.number().positive(),
    weight_decay: z.number().min(0),
    warmup_steps: z.number().int().min(0),
    scheduler: z.enum(["cosine", "linear", "constant"]),
    min_lr_ratio: z.number().min(0).max(1),
    max_grad_norm: z.number().min(0),
    optimizer: z.enum(["adamw", "adamw8bit"]),
    adam_beta1: z.number(),
    adam_beta2: z.number(),
    adam_eps: z.number(),
    gradient_checkpointing: z.boolean(),
    /** CUDA only: regional torch.compile of the decoder layers (docs/performance.md). Absent = off. */
    compile: z.boolean().optional(),
    /** LoRA adapter math: auto = the fused 16-bit Function, exact = peft's fp32 math. Absent = auto. */
    lora_compute: z.enum(["auto", "exact"]).optional(),
    /** Recomputed in backward: every decoder layer, each MLP block, the compiled layers' elementwise results
     * only, or nothing. Absent = from gradient_checkpointing (true → full, false → none); present, it must
     * agree with it (true: full or mlp). */
    recompute: z.enum(["full", "mlp", "elementwise", "none"]).optional(),
    /** Tensors saved for backward by the decoder wait in pinned CPU memory. Absent = off. */
    offload_activations: z.union([z.boolean(), z.literal("auto")]).optional(),
    /** CUDA graphs for each micro-batch's forward, loss and backward. Absent = auto (on for one CUDA device). */
    cuda_graphs: z.union([z.boolean(), z.literal("auto")]).optional(),
    /** Frozen base projections: bf16 = the model dtype as loaded, fp8 = FP8 weights and GEMMs (method lora).
     * Absent = bf16. */
    base_precision: z.enum(["bf16", "fp8"]).optional(),
    log_every: z.number().int().positive(),
    eval_every: z.number().int().min(0),
    save_every: z.number().int().min(0),
    /** Stop after this many evaluations without a new best validation loss (the best weights are then the
     * exported ones); absent/null = never stop early. */
    early_stopping_patience: z.number().int().positive().nullable().optional(),
  }),
  device: z.enum(["auto", "cpu", "cuda"]),
  output: z.object({
    adapter_dir: z.string(),
    checkpoints_dir: z.string(),
  }),
  /** Written into adapter_config.json's base_model_name_or_path. */
  base_model_name: z.string(),
  resume_from: z.string().nullable(),
  /** Several processes under torchrun (docs/distributed.md); absent = one process. The runner launches
   * `python -m torch.distributed.run` from these; the engine checks gpus × nnodes against WORLD_SIZE. */
  distributed: DistributedPlan.optional(),
});
export type TrainPlan = z.infer<typeof TrainPlan>;

/** `python -m tuna_engine merge --plan merge_plan.json`: fold an adapter into its base model → HF model dir. */
export const MergePlan = z.object({
  version: z.literal(PROTOCOL_VERSION),
  command: z.literal("merge"),
  model: z.object({
    path: z.string(),
    /** dtype of the written weights (the fold itself runs in fp32). */
    dtype: z.enum(["float32", "bfloat16", "float16"]),
  }),
  /** A PEFT LoRA/DoRA adapter directory (adapter_config.json + adapter_model.safetensors). */
  adapter_dir: z.string(),
  output_dir: z.string(),
  device: z.enum(["auto", "cpu", "cuda"]),
  /** Largest safetensors shard in bytes (default 5 GiB). */
  max_shard_bytes: z.number().int().positive().optional(),
});
export type MergePlan = z.infer<typeof MergePlan>;

// ---- events (engine → TypeScript, one JSON object per stdout line) ----------------------------------------

export const StartEvent = z.object({
  event: z.literal("start"),
  device: z.string(),
  dtype: z.string(),
  params_total: z.number(),
  params_trainable: z.number(),
  total_steps: z.number(),
  start_step: z.number(),
  /** Under torchrun: the number of processes and how the model is spread over them. */
  world_size: z.number().int().optional(),
  strategy: z.enum(["fsdp", "ddp"]).optional(),
});
export const StepEvent = z.object({
  event: z.literal("step"),
  step: z.number(),
  total_steps: z.number(),
  loss: z.number(),
  lr: z.number(),
  grad_norm: z.number(),
  /** Trained (loss-weighted) tokens in this optimizer step. */
  trained_tokens: z.number(),
  tokens_per_s: z.number(),
  elapsed_s: z.number(),
  eta_s: z.number(),
  /** Peak accelerator memory in GiB (null on CPU). */
  memory_gib: z.number().nullable(),
  /** Under torchrun on CUDA: each rank's peak memory in GiB, in rank order (memory_gib is rank 0's). */
  memory_gib_per_rank: z.array(z.number()).optional(),
  /** float16 only: the dynamic loss scale this step used, and the steps skipped so far (gradient overflow). */
  loss_scale: z.number().optional(),
  skipped_steps: z.number().int().optional(),
});
export const EvalEvent = z.object({ event: z.literal("eval"), step: z.number(), val_loss: z.number() });
export const CheckpointEvent = z.object({
  event: z.literal("checkpoint"),
  step: z.number(),
  path: z.string(),
});
export const DoneEvent = z.object({
  event: z.literal("done"),
  steps: z.number(),
  final_loss: z.number().nullable(),
  /** LoRA: the PEFT adapter dir; full fine-tuning / merge: the HF model dir. */
  adapter_dir: z.string(),
  elapsed_s: z.number(),
  /** Step and value of the lowest validation loss (null without validation). */
  best_step: z.number().nullable().optional(),
  best_val_loss: z.number().nullable().optional(),
});
export const ErrorEvent = z.object({
  event: z.literal("error"),
  code: z.string(),
  message: z.string(),
  hint: z.string().optional(),
  step: z.number().optional(),
});
export const LogEvent = z.object({ event: z.literal("log"), message: z.string() });

export const EngineEvent = z.discriminatedUnion("event", [
  StartEvent,
  StepEvent,
  EvalEvent,
  CheckpointEvent,
  DoneEvent,
  ErrorEvent,
  LogEvent,
]);
export type EngineEvent = z.infer<typeof EngineEvent>;

// ---- generation (long-lived: `python -m tuna_engine generate --plan plan.json`) -----------------------------
// The engine answers `ready` once the model is loaded, then reads one JSON request per line on stdin and streams
// `token` events back; TypeScript decodes the ids (the engine never sees text).

export const GeneratePlan = z.object({
  version: z.literal(PROTOCOL_VERSION),
  command: z.literal("generate"),
  model: z.object({ path: z.string(), dtype: z.enum(["float32", "bfloat16", "float16"]) }),
  /** LoRA adapters (PEFT layout) by name, applied without merging; a request picks one or none. */
  adapters: z.record(z.string(), z.string()),
  device: z.enum(["auto", "cpu", "cuda"]),
  /** Requests decoded together at most. */
  max_batch_size: z.number().int().positive(),
  /** KV cache positions per request (longest prompt + max_new_tokens); engine default 4096, TUNA_MAX_MODEL_LEN overrides. */
  max_model_len: z.number().int().positive().optional(),
  /** Decode path; engine default auto (graph on CUDA, eager on CPU), TUNA_GENERATE_MODE overrides. */
  mode: z.enum(["auto", "graph", "eager", "reference"]).optional(),
  /** Fused decode layer (engine default true; TUNA_GENERATE_FUSED overrides). */
  fused: z.boolean().optional(),
  /** torch.compile of the fused decode layer (engine default false; TUNA_GENERATE_COMPILE overrides). */
  compile: z.boolean().optional(),
});
export type GeneratePlan = z.infer<typeof GeneratePlan>;

export const GenerateRequest = z.object({
  type: z.literal("generate").optional(),
  id: z.string(),
  prompt_ids: z.array(z.number().int().min(0)).min(1),
  max_new_tokens: z.number().int().positive(),
  /** 0 = greedy. */
  temperature: z.number().min(0),
  top_p: z.number().gt(0).max(1),
  /** 0 = off. */
  top_k: z.number().int().min(0),
  repetition_penalty: z.number().positive(),
  seed: z.number().int().nullable(),
  /** Generation stops after emitting any of these (the end-of-turn token, e.g. <|im_end|>). */
  stop_ids: z.array(z.number().int()),
  adapter: z.string().nullable(),
});
export type GenerateRequest = z.infer<typeof GenerateRequest>;
/** Stop one request (Ctrl-C in `tuna chat` stops the answer, not the session). */
export const CancelRequest = z.object({ type: z.literal("cancel"), id: z.string() });

export const ReadyEvent = z.object({ event: z.literal("ready"), device: z.string(), dtype: z.string() });
export const TokenEvent = z.object({
  event: z.literal("token"),
  id: z.string(),
  token_ids: z.array(z.number()),
});
export const FinishedEvent = z.object({
  event: z.literal("finished"),
  id: z.string(),
  reason: z.enum(["stop", "length", "cancelled"]),
  prompt_tokens: z.number(),
  generated_tokens: z.number(),
  elapsed_s: z.number(),
});
export const GenerateEvent = z.discriminatedUnion("event", [
  ReadyEvent,
  TokenEvent,
  FinishedEvent,
  ErrorEvent,
  LogEvent,
]);
export type GenerateEvent = z.infer<typeof GenerateEvent>;

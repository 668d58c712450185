// The run config (`tuna train <config.yaml>`): one typed object with defaults; derived values are computed in
// resolve.ts. docs/config.md documents every field; test/config.test.ts keeps the two in step.
import { z } from "zod";
import { DataConfig } from "../data/config.ts";

const LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;

export const TemplateConfig = z
  .object({
    /**
     * Thinking mode for samples that do not set one (a source's `thinking` or a record's overrides it):
     * true, false, or "auto" (on for conversations whose assistant turns carry reasoning, off otherwise).
     */
    thinking: z.union([z.boolean(), z.literal("auto")]).default("auto"),
    /** Assistant turns trained when a message has no `weight` (0/1, always honoured): all, or only the last. */
    loss_on: z.enum(["all", "last"]).default("all"),
  })
  .strict();

export const PackConfig = z
  .object({
    max_length: z.number().int().min(16).max(1_048_576).default(2048),
    /** Samples longer than max_length: dropped and counted, or cut to max_length. */
    over_length: z.enum(["drop", "truncate"]).default("drop"),
  })
  .strict();

export const MethodConfig = z
  .object({
    type: z.enum(["lora", "qlora", "full"]).default("lora"),
    r: z.number().int().positive().default(16),
    alpha: z.number().positive().default(32),
    dropout: z.number().min(0).max(0.9).default(0),
    target_modules: z
      .union([z.literal("all-linear"), z.array(z.enum(LORA_TARGETS)).min(1)])
      .default("all-linear"),
    use_rslora: z.boolean().default(false),
    use_dora: z.boolean().default(false),
    /** qlora only: projections kept in 16 bit, by module path or a dotted part of it ("layers.0.mlp.down_proj",
     * "o_proj", "mlp"). Embeddings, norms and lm_head are always 16-bit. */
    keep_16bit: z.array(z.string().min(1)).optional(),
    /** Freezing: LoRA adapters only on these decoder layers (full: only these layers train). */
    trainable_layers: z.array(z.number().int().min(0)).min(1).optional(),
    /** Full fine-tuning only: train only parameters under these module names (e.g. mlp, q_proj, lm_head). */
    trainable_modules: z.array(z.string().min(1)).min(1).optional(),
  })
  .strict();

export const TrainConfig = z
  .object({
    seed: z.number().int().default(42),
    /** Passes over the training packs; ignored when max_steps is set. */
    epochs: z.number().positive().default(1),
    max_steps: z.number().int().positive().optional(),
    /** Packs (rows of max_length tokens) per micro-batch. */
    micro_batch_size: z.number().int().positive().default(1),
    grad_accum: z.number().int().positive().default(1),
    learning_rate: z.number().positive().max(1).default(2e-4),
    weight_decay: z.number().min(0).default(0),
    warmup_steps: z.number().int().min(0).optional(),
    warmup_ratio: z.number().min(0).max(1).default(0.03),
    scheduler: z.enum(["cosine", "linear", "constant"]).default("cosine"),
    min_lr_ratio: z.number().min(0).max(1).default(0),
    max_grad_norm: z.number().min(0).default(1),
    optimizer: z.enum(["adamw", "adamw8bit"]).default("adamw"),
    /** The older switch for recompute (true → full, false → none); absent = true unless recompute says. */
    gradient_checkpointing: z.boolean().optional(),
    /** CUDA: regional torch.compile of the decoder layers (1.5–1.8× measured; docs/performance.md). */
    compile: z.boolean().default(true),
    /** LoRA adapter math: auto = fused 16-bit Function (fast path), exact = peft's fp32 math bit for bit. */
    lora_compute: z.enum(["auto", "exact"]).default("auto"),
    /** What the backward pass recomputes; when given it decides, else gradient_checkpointing does
     * (true → full, false → none). elementwise = no layer recomputed, but the compiled layers rebuild norms,
     * rotary and SwiGLU's product from the GEMM outputs they keep. gradient_checkpointing: false with
     * full/mlp is a contradiction. */
    recompute: z.enum(["full", "mlp", "elementwise", "none"]).optional(),
    /** Activations saved for backward wait in pinned CPU memory; "auto" = CUDA with recompute full, for forward
     * passes whose layer inputs come to ≥ 1 GiB (docs/config.md). */
    offload_activations: z.union([z.boolean(), z.literal("auto")]).default("auto"),
    /** CUDA graphs for each micro-batch's forward, loss and backward: "auto" = on for one CUDA device with
     * Tuna's own models, a shape captured the second time it is seen (docs/config.md). */
    cuda_graphs: z.union([z.boolean(), z.literal("auto")]).default("auto"),
    /** The frozen base projections: bf16 = as loaded (the model dtype), fp8 = held in FP8 (e4m3, per-channel
     * scales) with every base GEMM in FP8 — Ada/Hopper GPUs, method lora only (docs/engine.md). */
    base_precision: z.enum(["bf16", "fp8"]).default("bf16"),
    /** Stop after this many validation evaluations without a new best (needs eval_every); absent = never. */
    early_stopping_patience: z.number().int().positive().optional(),
    log_every: z.number().int().positive().default(1),
    /** Validation loss every N steps (0 = only at the end). */
    eval_every: z.number().int().min(0).default(0),
    /** Checkpoint every N steps (0 = only at the end). */
    save_every: z.number().int().min(0).default(0),
  })
  .strict()
  .superRefine((t, ctx) => {
    // Only values the user wrote can contradict each other (gradient_checkpointing has no default here).
    if (t.gradient_checkpointing === undefined || t.recompute === undefined) return;
    const layers = t.recompute === "full" || t.recompute === "mlp";
    if (t.gradient_checkpointing !== layers)
      ctx.addIssue({
        code: "custom",
        path: ["recompute"],
        message: t.gradient_checkpointing
          ? `recompute "${t.recompute}" contradicts gradient_checkpointing: true (true means a layer or block is recomputed: recompute "full" or "mlp"); drop one of them`
          : `recompute "${t.recompute}" contradicts gradient_checkpointing: false (false means no layer is recomputed: recompute "none" or "elementwise"); drop one of them`,
      });
  });

/** `distributed:` — training on several GPUs under torchrun (docs/distributed.md). */
export const DistributedConfig = z
  .object({
    /** Processes (GPUs) per node. */
    gpus: z.number().int().min(1).default(1),
    nnodes: z.number().int().min(1).default(1),
    node_rank: z.number().int().min(0).default(0),
    master_addr: z.string().min(1).default("127.0.0.1"),
    master_port: z.number().int().min(1).max(65535).default(29500),
    /** fsdp: FSDP2, weights/gradients/optimizer state sharded; ddp: a whole replica per GPU; auto: the engine
     * picks ddp when a replica fits half a GPU (it scales better), else fsdp (docs/distributed.md). */
    strategy: z.enum(["auto", "fsdp", "ddp"]).default("auto"),
  })
  .strict();

export const RunConfig = z
  .object({
    /** Model directory (Hugging Face layout: config.json, safetensors, tokenizer.json, chat template). */
    model: z.string().min(1),
    /** Name written to adapter_config.json base_model_name_or_path (default: the model directory). */
    base_model_name: z.string().optional(),
    data: DataConfig,
    template: TemplateConfig.default(TemplateConfig.parse({})),
    pack: PackConfig.default(PackConfig.parse({})),
    method: MethodConfig.default(MethodConfig.parse({})),
    train: TrainConfig.default(TrainConfig.parse({})),
    device: z.enum(["auto", "cpu", "cuda"]).default("auto"),
    /** Several GPUs (docs/distributed.md); `tuna train --gpus N` sets gpus. */
    distributed: DistributedConfig.optional(),
    /** Weights/activations dtype; auto = bfloat16 on a GPU that has it, else float32. */
    dtype: z.enum(["auto", "float32", "bfloat16", "float16"]).default("auto"),
    /** Where run directories go. */
    output_dir: z.string().default("runs"),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.train.base_precision === "fp8" && c.method.type !== "lora")
      ctx.addIssue({
        code: "custom",
        path: ["train", "base_precision"],
        message: `base_precision "fp8" needs method.type "lora" (a 16-bit base quantized to FP8 at load); method.type is "${c.method.type}"${c.method.type === "qlora" ? " (its base is already 4-bit)" : " (full fine-tuning trains the base)"}`,
      });
    const d = c.distributed;
    if (!d) return;
    const world = d.gpus * d.nnodes;
    if (c.train.grad_accum % world !== 0) {
      ctx.addIssue({
        code: "custom",
        path: ["train", "grad_accum"],
        message: `train.grad_accum ${c.train.grad_accum} is not divisible by ${world} processes (distributed.gpus ${d.gpus} × nnodes ${d.nnodes}); the global batch micro_batch_size × grad_accum stays that of one GPU, so each process runs grad_accum / ${world} micro-batches — use a multiple of ${world}`,
      });
    }
    if (d.node_rank >= d.nnodes) {
      ctx.addIssue({
        code: "custom",
        path: ["distributed", "node_rank"],
        message: `distributed.node_rank ${d.node_rank} must be below nnodes ${d.nnodes}`,
      });
    }
  });
export type RunConfig = z.infer<typeof RunConfig>;

/** The plan's `distributed` section for a config (undefined = one process). */
export function distributedPlan(c: RunConfig): DistributedPlanFields | undefined {
  const d = c.distributed;
  if (!d || d.gpus * d.nnodes === 1) return undefined;
  return { ...d };
}
export type DistributedPlanFields = z.infer<typeof DistributedConfig>;

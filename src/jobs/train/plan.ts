// Run config + shard manifest → the engine's plan.json.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { distributedPlan, type RunConfig } from "../../config/schema.ts";
import { PROTOCOL_VERSION, TrainPlan } from "../../engine/protocol.ts";
import type { Manifest } from "../../pack/shards.ts";

export function hasCudaGpu(): boolean {
  try {
    execFileSync("nvidia-smi", ["-L"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export function resolveDevice(config: RunConfig): {
  device: "cpu" | "cuda";
  dtype: TrainPlan["model"]["dtype"];
} {
  const device = config.device === "auto" ? (hasCudaGpu() ? "cuda" : "cpu") : config.device;
  // bf16 on CPU is slow and imprecise to compare; fp32 there unless asked.
  const dtype = config.dtype === "auto" ? (device === "cuda" ? "bfloat16" : "float32") : config.dtype;
  return { device, dtype };
}

export function totalSteps(config: RunConfig, trainPacks: number): number {
  if (config.train.max_steps) return config.train.max_steps;
  const perStep = config.train.micro_batch_size * config.train.grad_accum;
  return Math.max(1, Math.ceil((config.train.epochs * trainPacks) / perStep));
}

export function buildTrainPlan(args: {
  config: RunConfig;
  modelDir: string;
  runDir: string;
  manifest: Manifest;
  resumeFrom?: string | null;
}): TrainPlan {
  const { config, runDir, manifest } = args;
  const dataDir = join(runDir, "data");
  const steps = totalSteps(config, manifest.splits.train.packs);
  const t = config.train;
  const recompute = t.recompute ?? (t.gradient_checkpointing === false ? "none" : "full");
  const { device, dtype } = resolveDevice(config);
  const m = config.method;
  const plan: TrainPlan = {
    version: PROTOCOL_VERSION,
    command: "train",
    run_dir: runDir,
    model: { path: args.modelDir, dtype },
    data: {
      train: manifest.splits.train.shards.map((s) => join(dataDir, s)),
      validation: (manifest.splits.validation?.shards ?? []).map((s) => join(dataDir, s)),
      manifest: join(dataDir, "manifest.json"),
    },
    method: {
      type: m.type,
      lora:
        m.type === "full"
          ? undefined
          : {
              r: m.r,
              alpha: m.alpha,
              dropout: m.dropout,
              target_modules: m.target_modules === "all-linear" ? ["all-linear"] : m.target_modules,
              use_rslora: m.use_rslora,
              use_dora: m.use_dora,
            },
      // The engine refuses keep_16bit for a method other than qlora, naming the field.
      ...(m.keep_16bit ? { keep_16bit: m.keep_16bit } : {}),
      ...(m.trainable_layers ? { trainable_layers: m.trainable_layers } : {}),
      ...(m.trainable_modules ? { trainable_modules: m.trainable_modules } : {}),
    },
    train: {
      seed: t.seed,
      micro_batch_size: t.micro_batch_size,
      grad_accum: t.grad_accum,
      max_steps: steps,
      learning_rate: t.learning_rate,
      weight_decay: t.weight_decay,
      warmup_steps: t.warmup_steps ?? Math.round(t.warmup_ratio * steps),
      scheduler: t.scheduler,
      min_lr_ratio: t.min_lr_ratio,
      max_grad_norm: t.max_grad_norm,
      optimizer: t.optimizer,
      adam_beta1: 0.9,
      adam_beta2: 0.999,
      adam_eps: 1e-8,
      // recompute, when given, decides; else gradient_checkpointing (true → full, false → none). The engine's
      // gradient_checkpointing means "a layer or block is recomputed".
      gradient_checkpointing: recompute === "full" || recompute === "mlp",
      compile: t.compile,
      lora_compute: t.lora_compute,
      recompute,
      offload_activations: t.offload_activations,
      cuda_graphs: t.cuda_graphs,
      base_precision: t.base_precision,
      ...(t.early_stopping_patience ? { early_stopping_patience: t.early_stopping_patience } : {}),
      log_every: t.log_every,
      eval_every: t.eval_every,
      save_every: t.save_every,
    },
    device,
    output: { adapter_dir: join(runDir, "adapter"), checkpoints_dir: join(runDir, "checkpoints") },
    base_model_name: config.base_model_name ?? args.modelDir,
    resume_from: args.resumeFrom ?? null,
    ...(distributedPlan(config) ? { distributed: distributedPlan(config) } : {}),
  };
  // The plan is a contract: validate what we send.
  return TrainPlan.parse(plan);
}

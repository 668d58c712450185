// The data section of a run config (embedded by src/config/ as `data:`). Every field is documented in
// docs/data.md; defaults live here and nowhere else.
import { z } from "zod";
import { LANGUAGES } from "./clean.ts";
import { FORMATS } from "./formats.ts";
import { PII_TYPES } from "./pii.ts";
import { DEFAULT_MAX_RECORD_BYTES } from "./readers.ts";

export const SplitConfig = z
  .object({
    fraction: z.number().min(0).lt(1).optional(),
    count: z.number().int().min(0).optional(),
  })
  .strict()
  .refine((s) => !(s.fraction !== undefined && s.count !== undefined), {
    message: "give either fraction or count, not both",
  });
export type SplitConfig = z.infer<typeof SplitConfig>;

export const ColumnsConfig = z
  .object({
    user: z.string().min(1),
    assistant: z.string().min(1),
    system: z.string().min(1).optional(),
    reasoning: z.string().min(1).optional(),
    tools: z.string().min(1).optional(),
  })
  .strict();

export const SourceConfig = z
  .object({
    /** A file, a directory, a glob, or a list of them. */
    path: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    name: z.string().min(1).optional(),
    format: z.enum(FORMATS).optional(),
    columns: ColumnsConfig.optional(),
    /** JSON files holding an object: the key of the records array. */
    field: z.string().min(1).optional(),
    /** Share of the training mix (normalised over sources). `weight` is accepted as another name. */
    ratio: z.number().positive().optional(),
    weight: z.number().positive().optional(),
    thinking: z.boolean().optional(),
    /** Validation split of this source; overrides the top-level `split`. */
    validation: SplitConfig.optional(),
    /** Read at most this many valid records of this source (in file order). */
    limit: z.number().int().positive().optional(),
  })
  .strict()
  .refine((s) => !(s.ratio !== undefined && s.weight !== undefined), {
    message: "give ratio or weight, not both",
  })
  .refine((s) => s.format !== "columns" || s.columns !== undefined, {
    message: "format columns needs a columns mapping {user, assistant}",
  });
export type SourceConfig = z.infer<typeof SourceConfig>;

export const DataConfig = z
  .object({
    sources: z.array(SourceConfig).min(1),
    /** Seed of every random choice (splits, mixing); same config → same output order. */
    seed: z.union([z.string(), z.number()]).default(0),
    validation: z
      .object({
        strict: z.boolean().default(false),
        maxRecordBytes: z.number().int().positive().default(DEFAULT_MAX_RECORD_BYTES),
        maxExamples: z.number().int().min(0).default(5),
      })
      .strict()
      .prefault({}),
    clean: z
      .object({
        dedup: z
          .object({
            exact: z.boolean().default(true),
            near: z.boolean().default(true),
            threshold: z.number().gt(0).max(1).default(0.8),
          })
          .strict()
          .prefault({}),
        pii: z
          .object({
            enabled: z.boolean().default(true),
            types: z.partialRecord(z.enum(PII_TYPES), z.boolean()).default({}),
          })
          .strict()
          .prefault({}),
        filters: z
          .object({
            minTurns: z.number().int().min(0).optional(),
            maxTurns: z.number().int().min(1).optional(),
            languages: z.array(z.enum(LANGUAGES)).min(1).optional(),
            minTokens: z.number().int().min(0).optional(),
            maxTokens: z.number().int().min(1).optional(),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    mix: z
      .object({
        by: z.enum(["samples", "tokens"]).default("samples"),
        total: z.number().positive().optional(),
        upsample: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    /** Default validation split of every source. */
    split: SplitConfig.optional(),
  })
  .strict();
export type DataConfig = z.infer<typeof DataConfig>;
export type DataConfigInput = z.input<typeof DataConfig>;

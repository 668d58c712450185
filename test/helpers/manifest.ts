// The smallest shard manifest buildTrainPlan accepts: one train split of `packs` packs in one shard.
export function oneSplitManifest(samples: number, packs: number) {
  const split = {
    samples,
    packs,
    tokens: 0,
    trained_tokens: 0,
    padding_tokens: 0,
    pack_efficiency: 1,
    dropped_too_long: 0,
    truncated: 0,
    dropped_no_trained_tokens: 0,
    shards: ["train-00000.safetensors"],
    length_histogram: [],
  };
  return {
    format: "tuna-shards" as const,
    version: 1 as const,
    created: "",
    tokenizer_hash: "",
    template_hash: "",
    max_length: 2048,
    splits: { train: split },
    rejected: {},
    config: {},
  };
}

// Public API of the tokenizer room: load a model directory's tokenizer.json, or build from its contents.
export { loadTokenizer } from "./load.ts";
export { createTokenizerPool, type TokenizerPool } from "./pool.ts";
export { tokenizerFromJson } from "./tokenizer.ts";
export type { EncodeOptions, Encoding, Tokenizer } from "./types.ts";

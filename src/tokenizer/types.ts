// The tokenizer contract other rooms code against. src/tokenizer/ implements it from a model's tokenizer.json.

export interface EncodeOptions {
  /** Encode special-token text such as `<|im_start|>` as plain text (HF `split_special_tokens=True`). */
  splitSpecial?: boolean;
}

export interface Encoding {
  ids: Int32Array;
  /** Character offsets (UTF-16 code units into the input string): token i covers [offsets[2i], offsets[2i+1]). */
  offsets: Uint32Array;
}

/** `encodeAt`: ids, and where given character positions fall among the tokens. */
export interface PositionedEncoding {
  ids: Int32Array;
  /** For each position: the index of the first token starting at or after it, or -1 when it falls inside a token
   * (the token before that one ends after it). */
  at: Int32Array;
}

export interface Tokenizer {
  /** Like HF `encode(text, add_special_tokens=False)`. */
  encode(text: string, opts?: EncodeOptions): Int32Array;
  encodeWithOffsets(text: string, opts?: EncodeOptions): Encoding;
  /** Ids and the token index at each of `positions` (ascending), without per-token offsets (faster). Optional:
   * callers fall back to encodeWithOffsets. */
  encodeAt?(text: string, positions: ArrayLike<number>, opts?: EncodeOptions): PositionedEncoding;
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string;
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  readonly vocabSize: number;
  /** sha256 of tokenizer.json, recorded in shard manifests. */
  readonly hash: string;
}

"""Reference encodings from Hugging Face `tokenizers` for the parity test and the benchmark.

usage: hf_encode.py TOKENIZER_JSON CORPUS_JSON OUT_PREFIX [--offsets N] [--bench]

Writes OUT_PREFIX.{default,split}.lens/.ids (int32 little-endian: ids per text, then all ids) for
`encode(text, add_special_tokens=False)` with split_special_tokens off and on. --offsets N also writes
OUT_PREFIX.offsets (int32 [start, end) pairs in UTF-16 units) for the first N texts in default mode.
--bench instead times single-threaded encoding (set RAYON_NUM_THREADS=1) and prints JSON.
"""

import json
import sys
import time

import numpy as np
from tokenizers import Tokenizer


def utf16_positions(text: str) -> np.ndarray:
    """UTF-16 offset of every code point index 0..len(text)."""
    widths = np.fromiter((2 if ord(c) > 0xFFFF else 1 for c in text), dtype=np.int64, count=len(text))
    return np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)


def main() -> None:
    tok_path, corpus_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    args = sys.argv[4:]
    tok = Tokenizer.from_file(tok_path)
    with open(corpus_path, encoding="utf-8") as f:
        texts: list[str] = json.load(f)
    if "--bench" in args:
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        tok.encode_batch(texts[:50], add_special_tokens=False)  # warm up
        best = float("inf")
        for _ in range(int(args[args.index("--bench") + 1]) if len(args) > args.index("--bench") + 1 else 3):
            t0 = time.perf_counter()
            n_ids = 0
            for t in texts:
                n_ids += len(tok.encode(t, add_special_tokens=False).ids)
            best = min(best, time.perf_counter() - t0)
        print(json.dumps({"seconds": best, "bytes": n_bytes, "ids": n_ids}))
        return
    for mode in ("default", "split"):
        tok.encode_special_tokens = mode == "split"
        encs = tok.encode_batch(texts, add_special_tokens=False)
        lens = np.array([len(e.ids) for e in encs], dtype="<i4")
        ids = np.concatenate([np.array(e.ids, dtype="<i4") for e in encs]) if encs else np.zeros(0, "<i4")
        lens.tofile(f"{out}.{mode}.lens")
        ids.tofile(f"{out}.{mode}.ids")
        if mode == "default" and "--offsets" in args:
            n = int(args[args.index("--offsets") + 1])
            parts = []
            for text, e in zip(texts[:n], encs[:n], strict=True):
                pos = utf16_positions(text)
                offs = np.array(e.offsets, dtype=np.int64).reshape(-1, 2)
                parts.append(pos[offs].astype("<i4").reshape(-1))
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            flat.astype("<i4").tofile(f"{out}.offsets")


if __name__ == "__main__":
    main()

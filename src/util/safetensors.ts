// safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
// then the raw little-endian tensor bytes. Small enough to write by hand; both languages read it natively.
import { closeSync, fsyncSync, openSync, readFileSync, readSync, renameSync, writeSync } from "node:fs";
import { TunaError } from "../errors.ts";

export type Dtype = "F32" | "F16" | "BF16" | "I32" | "I64" | "U8" | "I8";

export const DTYPE_BYTES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1, I8: 1 };

export interface TensorData {
  dtype: Dtype;
  shape: number[];
  /** Raw little-endian bytes (length = product(shape) * DTYPE_BYTES[dtype]). */
  bytes: Uint8Array;
}

export interface TensorSpec {
  dtype: Dtype;
  shape: number[];
  byteLength: number;
}

function headerFor(specs: [string, TensorSpec][], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of specs) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (expected !== t.byteLength) {
      throw new TunaError(
        "SAFETENSORS_SHAPE",
        `tensor ${name}: ${t.byteLength} bytes for shape [${t.shape}] ${t.dtype}, expected ${expected}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] };
    offset += t.byteLength;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (what the Rust writer does).
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(jsonBytes.length));
  return Buffer.concat([len, jsonBytes]);
}

/**
 * Streams tensors into `path` without holding them all in memory: the caller declares every tensor first
 * (the header needs all offsets), then writes their bytes in the declared order. Written to `path.tmp`,
 * fsynced and renamed, so a crash never leaves a half-written file under the real name.
 */
export class SafetensorsWriter {
  private fd: number;
  private next = 0;
  private readonly tmp: string;

  constructor(
    private readonly path: string,
    private readonly specs: [string, TensorSpec][],
    metadata?: Record<string, string>,
  ) {
    this.tmp = `${path}.tmp`;
    this.fd = openSync(this.tmp, "w");
    writeAll(this.fd, headerFor(specs, metadata));
  }

  /** Append bytes of the current tensor; call `endTensor` when its declared length is reached. */
  private written = 0;
  write(bytes: Uint8Array): void {
    const spec = this.specs[this.next];
    if (!spec)
      throw new TunaError("SAFETENSORS_ORDER", `write past the last declared tensor of ${this.path}`);
    if (this.written + bytes.length > spec[1].byteLength) {
      throw new TunaError(
        "SAFETENSORS_ORDER",
        `tensor ${spec[0]} overflows its declared ${spec[1].byteLength} bytes`,
      );
    }
    writeAll(this.fd, bytes);
    this.written += bytes.length;
    if (this.written === spec[1].byteLength) {
      this.next++;
      this.written = 0;
    }
  }

  close(): void {
    if (this.next !== this.specs.length) {
      throw new TunaError(
        "SAFETENSORS_ORDER",
        `${this.path}: only ${this.next} of ${this.specs.length} tensors written`,
      );
    }
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.tmp, this.path);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
}

export function writeSafetensors(
  path: string,
  tensors: Record<string, TensorData>,
  metadata?: Record<string, string>,
): void {
  const entries = Object.entries(tensors);
  const w = new SafetensorsWriter(
    path,
    entries.map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape, byteLength: t.bytes.byteLength }]),
    metadata,
  );
  for (const [, t] of entries) if (t.bytes.byteLength > 0) w.write(t.bytes);
  // Zero-length tensors advance without a write.
  w.close();
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Record<string, TensorData>;
}

/** Reads a whole (small) safetensors file; for shards and tests, not for model weights. */
export function readSafetensors(path: string): SafetensorsFile {
  const buf = readFileSync(path);
  if (buf.length < 8)
    throw new TunaError("SAFETENSORS_CORRUPT", `${path}: file shorter than its 8-byte header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length)
    throw new TunaError("SAFETENSORS_CORRUPT", `${path}: header length ${n} past end of file`);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const base = 8 + n;
  const tensors: Record<string, TensorData> = {};
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = v as Record<string, string>;
      continue;
    }
    const t = v as { dtype: Dtype; shape: number[]; data_offsets: [number, number] };
    // Copy so the typed-array views are aligned regardless of the header's length.
    const bytes = new Uint8Array(buf.subarray(base + t.data_offsets[0], base + t.data_offsets[1]));
    tensors[name] = { dtype: t.dtype, shape: t.shape, bytes };
  }
  return { metadata, tensors };
}

/** Header only: tensor names, dtypes and shapes (reads a few KB, not the file). */
export function readSafetensorsHeader(path: string): Record<string, { dtype: Dtype; shape: number[] }> {
  const fd = openSync(path, "r");
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const h = Buffer.alloc(n);
    readSync(fd, h, 0, n, 8);
    const header = JSON.parse(h.toString("utf8"));
    delete header.__metadata__;
    return header;
  } finally {
    closeSync(fd);
  }
}

export function bytesOf(a: Int32Array | Float32Array | BigInt64Array | Uint8Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

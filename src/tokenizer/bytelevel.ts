// GPT-2 byte-level alphabet: every byte 0..255 maps to one printable code point, so any UTF-8 text is a string
// of vocabulary characters. Bytes that are already printable (and not space) map to themselves; the others are
// shifted to U+0100 onwards, in byte order (openai/gpt-2 `bytes_to_unicode`).

function buildByteToChar(): string[] {
  const direct: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) direct.push(b);
  for (let b = 0xa1; b <= 0xac; b++) direct.push(b);
  for (let b = 0xae; b <= 0xff; b++) direct.push(b);
  const table: string[] = new Array(256);
  const isDirect = new Uint8Array(256);
  for (const b of direct) {
    table[b] = String.fromCharCode(b);
    isDirect[b] = 1;
  }
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!isDirect[b]) table[b] = String.fromCharCode(256 + n++);
  }
  return table;
}

/** BYTE_TO_CHAR[b] is the vocabulary character of byte b. */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** CHAR_TO_BYTE[c] is the byte of vocabulary char code c (c < 0x144), or -1. */
export const CHAR_TO_BYTE: Int16Array = (() => {
  const t = new Int16Array(0x144).fill(-1);
  for (let b = 0; b < 256; b++) t[BYTE_TO_CHAR[b].charCodeAt(0)] = b;
  return t;
})();

/** UTF-8 bytes of s[start, end) appended to `out` from `at`; returns the new length. `out` must have room
 * for 3 bytes per UTF-16 unit. Lone surrogates become U+FFFD, as Rust's `String::from` does on the Python side. */
export function utf8Encode(s: string, start: number, end: number, out: Uint8Array, at: number): number {
  let k = at;
  for (let i = start; i < end; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out[k++] = c;
    } else if (c < 0x800) {
      out[k++] = 0xc0 | (c >> 6);
      out[k++] = 0x80 | (c & 63);
    } else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < end ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
          out[k++] = 0xf0 | (c >> 18);
          out[k++] = 0x80 | ((c >> 12) & 63);
          out[k++] = 0x80 | ((c >> 6) & 63);
          out[k++] = 0x80 | (c & 63);
          continue;
        }
        c = 0xfffd;
      }
      out[k++] = 0xe0 | (c >> 12);
      out[k++] = 0x80 | ((c >> 6) & 63);
      out[k++] = 0x80 | (c & 63);
    }
  }
  return k;
}

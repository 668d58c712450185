// First-fit-decreasing packing of sample lengths into packs of at most `maxLength` tokens.
//
// Samples are placed longest first into the first pack with room; a segment tree over the packs' free space
// finds "the first pack with at least n free" in O(log P), so 1M samples pack in well under a second.

export interface PackResult {
  /** packs[p] = indices of the samples in pack p (in placement order). */
  packs: number[][];
  /** Sum over packs of (maxLength - used): the padding a fixed-length batch would carry. */
  paddingTokens: number;
  usedTokens: number;
}

export function packFirstFitDecreasing(lengths: ArrayLike<number>, maxLength: number): PackResult {
  const n = lengths.length;
  const order = Array.from({ length: n }, (_, i) => i);
  // Longest first; ties by index so the result is deterministic.
  order.sort((a, b) => lengths[b] - lengths[a] || a - b);

  // Segment tree over at most n packs, storing max free space per node; unopened packs have maxLength free.
  let size = 1;
  while (size < Math.max(1, n)) size <<= 1;
  const tree = new Int32Array(2 * size).fill(maxLength);
  const packs: number[][] = [];

  const firstFit = (need: number): number => {
    if (tree[1] < need) return -1;
    let node = 1;
    while (node < size) node = tree[2 * node] >= need ? 2 * node : 2 * node + 1;
    return node - size;
  };
  const update = (slot: number, free: number) => {
    let node = slot + size;
    tree[node] = free;
    for (node >>= 1; node >= 1; node >>= 1) tree[node] = Math.max(tree[2 * node], tree[2 * node + 1]);
  };

  let used = 0;
  for (const i of order) {
    const len = lengths[i];
    if (len > maxLength)
      throw new RangeError(`sample ${i} has ${len} tokens, more than maxLength ${maxLength}`);
    const slot = firstFit(len);
    if (slot === packs.length) packs.push([]);
    packs[slot].push(i);
    update(slot, tree[slot + size] - len);
    used += len;
  }
  return { packs, usedTokens: used, paddingTokens: packs.length * maxLength - used };
}

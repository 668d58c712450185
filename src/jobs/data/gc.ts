// A full garbage collection, called where a thread has just dropped a lot (parsing tokenizer.json leaves about 60 MB
// of garbage in each thread that loads it). V8 would collect it in time, but until then the pages stay committed
// and count in the process's RSS: with two sample workers and the main thread that was 50–90 MB of the
// preparation's peak (20k FineTome-like conversations: 525–537 MB without, 476–478 MB with). `--expose-gc` set at
// run time exposes `gc` to contexts created after it.
//
// Sample workers also collect when their old and large-object spaces pass a threshold (OldSpaceCap): on a 2 GB
// input, with V8 left alone, each worker's old + large-object space grew by ~1.4 MB/s (rendered texts and batches
// over 128 KB live in large-object space, which only a full GC frees) to 55 MB past its live size before V8
// collected: peak 536–541 MB for the process. Collecting every 8 batches instead held the peak (482 MB) but cost
// about 40% more CPU time; collecting at a threshold costs one full GC every few tens of seconds.
import { getHeapSpaceStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

let gc: (() => void) | null = null;

export function collectGarbage(): void {
  if (!gc) {
    setFlagsFromString("--expose-gc");
    gc = runInNewContext("gc") as () => void;
  }
  gc();
}

/**
 * Collect when the old and large-object spaces hold more than `limit` bytes; if what survives is itself near the limit, the limit
 * moves to twice the survivors (so a thread whose live data grew is not collected after every call).
 */
export class OldSpaceCap {
  constructor(private limit: number) {}

  check(): void {
    if (oldSpaceUsed() <= this.limit) return;
    collectGarbage();
    const live = oldSpaceUsed();
    if (live > 0.75 * this.limit) this.limit = 2 * live;
  }
}

/** Bytes in the spaces that only a full GC empties: old objects and large objects (> 128 KB). */
function oldSpaceUsed(): number {
  let used = 0;
  for (const s of getHeapSpaceStatistics()) {
    if (s.space_name === "old_space" || s.space_name === "large_object_space") used += s.space_used_size;
  }
  return used;
}

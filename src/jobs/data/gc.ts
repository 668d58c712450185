// A full garbage collection, called where a thread has just dropped a lot (parsing tokenizer.json leaves about 60 MB
// of garbage in each thread that loads it). V8 would collect it in time, but until then the pages stay committed
// and count in the process's RSS: with two sample workers and the main thread that was 50–90 MB of the
// preparation's peak (20k FineTome-like conversations: 525–537 MB without, 476–478 MB with). `--expose-gc` set at
// run time exposes `gc` to contexts created after it.
//
// Only once, after loading: collecting every 8 batches in the workers as well did not lower the peak and cost
// about 40% more CPU time.
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

let gc: (() => void) | null = null;

export function collectGarbage(): void {
  if (!gc) {
    setFlagsFromString("--expose-gc");
    gc = runInNewContext("gc") as () => void;
  }
  gc();
}

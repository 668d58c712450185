// Entry of a sample worker thread: register tsx (the sources are TypeScript, as in bin/tuna.mjs), then run worker.ts.
import { register } from "tsx/esm/api";

register();
await import("./worker.ts");

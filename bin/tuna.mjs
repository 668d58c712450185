#!/usr/bin/env node
// Entry point of the `tuna` command. The sources are TypeScript run through tsx, so there is no build step
// between editing and running.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/main.ts");

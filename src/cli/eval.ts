import type { Command } from "commander";

// Placeholder while this command is being written; replaced by its owner.
export function register(_program: Command): void {}

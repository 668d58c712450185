import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Tests spawn Python and the CLI; two cores, so keep parallelism modest.
    pool: "forks",
    maxWorkers: 2,
  },
});

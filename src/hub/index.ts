// Pull models from Hugging Face, its mirrors, or ModelScope.

export { MANIFEST, readManifest } from "./manifest.ts";
export { makeClient, type PullOptions, type PullResult, pullModel } from "./pull.ts";
export { DEFAULT_FILES, globToRegExp, selectFiles } from "./select.ts";
export type { HubName, RemoteFile } from "./types.ts";

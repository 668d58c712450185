// What a hub client gives the puller: a file listing at one revision, download URLs, and its own error language.

export type HubName = "huggingface" | "modelscope";

export interface RemoteFile {
  /** Path inside the repository, `/`-separated. */
  path: string;
  /** Bytes; null where the listing does not say (then only the download's own length is checked). */
  size: number | null;
  /** sha256 of the content (Hugging Face gives it for LFS files, ModelScope for most files). */
  sha256?: string;
  /** Git blob id, sha1("blob <size>\0" + content): what Hugging Face gives for regular (non-LFS) files. */
  gitSha1?: string;
}

export interface Listing {
  /** The commit the revision resolved to, where the hub says (Hugging Face); downloads are pinned to it. */
  commit: string | null;
  files: RemoteFile[];
}

/** Response headers of the hub's own answer to a file request (before any redirect to a CDN). */
export interface HubFileHeaders {
  status: number;
  etag: string | null;
  linkedEtag: string | null;
  linkedSize: number | null;
  repoCommit: string | null;
}

export interface HubClient {
  readonly hub: HubName;
  readonly endpoint: string;
  readonly repo: string;
  readonly revision: string;
  /** Resolve the revision and list the repository's files (recursively). */
  list(): Promise<Listing>;
  /** Where to GET one file; `commit` pins the snapshot where the hub gave one. */
  fileUrl(path: string, commit: string | null): string;
  /** Headers for requests to the hub's own origin (auth); never sent to another origin after a redirect. */
  headers(): Record<string, string>;
  /** Expected hashes a hub announces in its file response headers (used when the listing had none). */
  hashesFromHeaders(h: HubFileHeaders): { sha256?: string; gitSha1?: string };
  /** Turn an HTTP error answer of this hub into a message a person can act on. */
  httpError(status: number, headers: Headers, body: string, url: string, file?: string): Error;
}

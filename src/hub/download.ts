// One file, resumable: bytes go to `<file>.part` (HTTP Range continues it after a cut, in this run or the next),
// are hashed as they arrive, and the file appears under its name only once its size and hash are verified.
import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, statSync, unlinkSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import { dirname } from "node:path";
import { TunaError } from "../errors.ts";
import {
  asTransient,
  checkTransientStatus,
  type RetryOptions,
  request,
  TransientError,
  withRetries,
} from "./http.ts";
import type { HubClient, RemoteFile } from "./types.ts";

export interface DownloadOptions {
  client: HubClient;
  url: string;
  file: RemoteFile;
  dest: string;
  http: RetryOptions & { stallMs: number };
  /** Bytes received (positive) or discarded after a server restarted the file (negative). */
  onBytes?: (n: number) => void;
}

export interface Downloaded {
  path: string;
  size: number;
  sha256: string;
  /** Git blob id, where the hub's listing or headers gave one to check. */
  gitSha1?: string;
  /** Bytes that came over the network this time (less than `size` after a resume). */
  fetched: number;
}

/** sha256 and (when the size is known) git-blob sha1 of everything written to the .part so far. */
class Hashes {
  sha256: Hash = createHash("sha256");
  sha1: Hash | null;
  bytes = 0;
  constructor(readonly size: number | null) {
    this.sha1 = size === null ? null : createHash("sha1").update(`blob ${size}\0`);
  }
  update(b: Uint8Array): void {
    this.sha256.update(b);
    this.sha1?.update(b);
    this.bytes += b.byteLength;
  }
  static async ofFile(path: string, size: number | null): Promise<Hashes> {
    const h = new Hashes(size);
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
    return h;
  }
}

export async function downloadFile(o: DownloadOptions): Promise<Downloaded> {
  const { file, dest, client } = o;
  const part = `${dest}.part`;
  mkdirSync(dirname(dest), { recursive: true });
  let expected = { sha256: file.sha256, gitSha1: file.gitSha1 };
  let hashes: Hashes | null = null;
  let fetched = 0;
  // A .part left by an earlier run may belong to an older version of the file: if the result does not verify,
  // it is thrown away and the file downloaded once more from the start.
  const stalePart = existsSync(part) && statSync(part).size > 0;

  const attempt = withRetries(
    async () => {
      let offset = existsSync(part) ? statSync(part).size : 0;
      if (file.size !== null && offset > file.size) {
        unlinkSync(part); // longer than the file can be: not a prefix of it
        offset = 0;
      }
      if (hashes === null && offset > 0) o.onBytes?.(offset); // an earlier run's bytes count as done
      if (hashes === null || hashes.bytes !== offset)
        hashes = offset > 0 ? await Hashes.ofFile(part, file.size) : new Hashes(file.size);
      if (file.size !== null && offset === file.size && offset > 0) return; // complete from an earlier run

      const headers: Record<string, string> = { ...client.headers(), "accept-encoding": "identity" };
      if (offset > 0) headers.range = `bytes=${offset}-`;
      const { res, hub, stall } = await request(o.url, { headers, stallMs: o.http.stallMs });
      try {
        checkTransientStatus(res, o.url);
        if (res.status === 416 && offset > 0) {
          // The server has nothing past our offset: the .part may already be whole (size unknown) or be stale.
          await res.body?.cancel();
          if (file.size === null) return;
          unlinkSync(part);
          o.onBytes?.(-offset);
          hashes = null;
          throw new TransientError(`HTTP 416 for a ${offset}-byte .part of ${file.path}; starting over`);
        }
        if (!res.ok)
          throw client.httpError(res.status, res.headers, await res.text().catch(() => ""), o.url, file.path);
        const fromHeaders = client.hashesFromHeaders(hub);
        expected = {
          sha256: expected.sha256 ?? fromHeaders.sha256,
          gitSha1: expected.gitSha1 ?? fromHeaders.gitSha1,
        };

        let append = false;
        if (res.status === 206) {
          const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
          if (!m || Number(m[1]) !== offset) {
            await res.body?.cancel();
            throw new TransientError(
              `bad Content-Range "${res.headers.get("content-range")}" for bytes=${offset}-`,
            );
          }
          append = true;
        } else if (offset > 0) {
          o.onBytes?.(-offset); // the server ignored Range: the whole file comes again
          hashes = new Hashes(file.size);
        }
        const fh = await open(part, append ? "a" : "w");
        try {
          if (!res.body) throw new TransientError(`empty body for ${file.path}`);
          for await (const chunk of res.body) {
            stall.touch();
            await fh.write(chunk);
            (hashes as Hashes).update(chunk);
            fetched += chunk.byteLength;
            o.onBytes?.(chunk.byteLength);
          }
          await fh.sync();
        } catch (e) {
          throw asTransient(e, stall.signal);
        } finally {
          await fh.close();
        }
      } finally {
        stall.done();
      }
      const got = (hashes as Hashes).bytes;
      if (file.size !== null && got < file.size)
        throw new TransientError(`${file.path}: connection ended at ${got} of ${file.size} bytes`);
    },
    {
      ...o.http,
      onRetry: (n, wait, e) => o.http.onRetry?.(n, wait, new TransientError(`${file.path}: ${e.message}`)),
    },
  );

  try {
    await attempt;
  } catch (e) {
    if (!(e instanceof TransientError)) throw e;
    const kept = existsSync(part) ? statSync(part).size : 0;
    throw new TunaError(
      "HUB_NETWORK",
      `${file.path}: download failed after ${o.http.retries} retries: ${e.message}${kept > 0 ? `; ${kept} bytes kept in ${part}` : ""}`,
      {
        hint: "run the same pull again: it resumes where it stopped (--retries raises the number of tries)",
        cause: e,
      },
    );
  }
  const h = hashes as unknown as Hashes;
  const size = h.bytes;
  const sha256 = h.sha256.digest("hex");
  const gitSha1 = h.sha1?.digest("hex");
  const fail = (what: string, want: string | number, got: string | number) => {
    unlinkSync(part);
    return new TunaError(
      "HUB_CHECKSUM",
      `${file.path}: ${what} mismatch: expected ${want}, got ${got}; the partial download ${part} was removed`,
      {
        hint: "run the pull again; if it fails the same way the hub or mirror serves a damaged file (try another --endpoint)",
      },
    );
  };
  const bad: [string, string | number, string | number] | null =
    file.size !== null && size !== file.size
      ? ["size", `${file.size} bytes`, `${size} bytes`]
      : expected.sha256 && expected.sha256 !== sha256
        ? ["sha256", expected.sha256, sha256]
        : expected.gitSha1 && gitSha1 && expected.gitSha1 !== gitSha1
          ? ["git blob sha1", expected.gitSha1, gitSha1]
          : null;
  if (bad && stalePart) {
    unlinkSync(part);
    o.onBytes?.(-size);
    const again = await downloadFile(o);
    return { ...again, fetched: again.fetched + fetched };
  }
  if (bad) throw fail(...bad);
  await rename(part, dest);
  return { path: file.path, size, sha256, gitSha1: expected.gitSha1 ? gitSha1 : undefined, fetched };
}

/** Hash a file already on disk (to trust a file that has no manifest entry). */
export async function hashFile(
  path: string,
  size: number | null,
): Promise<{ sha256: string; gitSha1?: string; size: number }> {
  const h = await Hashes.ofFile(path, size ?? statSync(path).size);
  return { sha256: h.sha256.digest("hex"), gitSha1: h.sha1?.digest("hex"), size: h.bytes };
}

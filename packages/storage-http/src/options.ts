import { StorageError } from "@qcow2/storage"

/** The subset of the WHATWG `fetch` this backend calls (the global one by default). */
export type FetchFunction = (input: string, init: RequestInit) => Promise<Response>

/** Tuning knobs of the HTTP backend; every field is optional. */
export interface HttpStorageOptions {
  /**
   * Cache block size in bytes: reads are rounded out to whole blocks and
   * every Range request starts and ends on a block boundary (except at EOF).
   * A power of two, at least 512. Default 256 KiB.
   */
  readonly blockSize?: number
  /** Bytes of blocks kept in the LRU cache. 0 disables caching. Default 64 MiB. */
  readonly cacheBytes?: number
  /**
   * Largest readahead window in bytes for sequential access; the window
   * starts at one block and doubles on each sequential miss. 0 disables
   * readahead. Capped at a quarter of `cacheBytes`. Default 8 MiB.
   */
  readonly maxReadahead?: number
  /** Largest single Range request in bytes (rounded down to whole blocks). Default 16 MiB. */
  readonly maxRequestBytes?: number
  /** HTTP requests in flight at once for this file. Default 6 (a browser's per-host limit). */
  readonly maxConcurrentRequests?: number
  /** Retries of a request after a transient failure (network error, timeout, 408, 429, 5xx). Default 4. */
  readonly retries?: number
  /** First retry delay in milliseconds; doubles per retry, with jitter. Default 100. */
  readonly retryBaseDelayMs?: number
  /** Upper bound of one retry delay (also caps a server's Retry-After). Default 5000. */
  readonly retryMaxDelayMs?: number
  /**
   * Idle timeout of one request attempt in milliseconds: the attempt is
   * aborted (and retried) when neither the response headers nor a body chunk
   * arrive for this long. Default 30000.
   */
  readonly timeoutMs?: number
  /**
   * Send `If-Match: <etag>` with every Range request when the server gave a
   * strong ETag, so a replaced file answers 412 instead of new bytes.
   * Validators of every response are compared with the first ones either way.
   * In browsers `If-Match` makes cross-origin requests non-simple (a CORS
   * preflight); turn it off if the server does not allow that header.
   * Default true.
   */
  readonly conditionalRequests?: boolean
  /** Extra request headers (e.g. `Authorization`). */
  readonly headers?: Readonly<Record<string, string>>
  /** `credentials` mode for browsers (cookies on cross-origin requests). */
  readonly credentials?: RequestCredentials
  /** The fetch implementation; default `globalThis.fetch`. */
  readonly fetch?: FetchFunction
}

/** Options with defaults applied and checked. */
export interface ResolvedOptions {
  readonly blockSize: number
  readonly cacheBytes: number
  readonly maxReadahead: number
  readonly maxRequestBlocks: number
  readonly maxConcurrentRequests: number
  readonly retries: number
  readonly retryBaseDelayMs: number
  readonly retryMaxDelayMs: number
  readonly timeoutMs: number
  readonly conditionalRequests: boolean
  readonly headers: Readonly<Record<string, string>>
  readonly credentials: RequestCredentials | undefined
  readonly fetch: FetchFunction
}

const KiB = 1024
const MiB = 1024 * KiB

export const defaults = {
  blockSize: 256 * KiB,
  cacheBytes: 64 * MiB,
  maxReadahead: 8 * MiB,
  maxRequestBytes: 16 * MiB,
  maxConcurrentRequests: 6,
  retries: 4,
  retryBaseDelayMs: 100,
  retryMaxDelayMs: 5000,
  timeoutMs: 30_000
} as const

const invalid = (name: string, value: unknown, rule: string, location: string) =>
  new StorageError({
    reason: "Unsupported",
    message: `invalid HTTP storage option ${name}=${String(value)}: ${rule}`,
    location
  })

/** Applies defaults and checks ranges; returns the first problem as a StorageError. */
export const resolveOptions = (options: HttpStorageOptions, location: string): ResolvedOptions | StorageError => {
  const blockSize = options.blockSize ?? defaults.blockSize
  if (!Number.isSafeInteger(blockSize) || blockSize < 512 || (blockSize & (blockSize - 1)) !== 0 || blockSize > 1 << 30) {
    return invalid("blockSize", blockSize, "a power of two from 512 to 2^30", location)
  }
  const counts: Array<[keyof HttpStorageOptions, number]> = [
    ["cacheBytes", options.cacheBytes ?? defaults.cacheBytes],
    ["maxReadahead", options.maxReadahead ?? defaults.maxReadahead],
    ["maxRequestBytes", options.maxRequestBytes ?? defaults.maxRequestBytes],
    ["maxConcurrentRequests", options.maxConcurrentRequests ?? defaults.maxConcurrentRequests],
    ["retries", options.retries ?? defaults.retries],
    ["retryBaseDelayMs", options.retryBaseDelayMs ?? defaults.retryBaseDelayMs],
    ["retryMaxDelayMs", options.retryMaxDelayMs ?? defaults.retryMaxDelayMs],
    ["timeoutMs", options.timeoutMs ?? defaults.timeoutMs]
  ]
  for (const [name, value] of counts) {
    if (!Number.isSafeInteger(value) || value < 0) return invalid(name, value, "a non-negative integer", location)
  }
  const [cacheBytes, maxReadahead, maxRequestBytes, maxConcurrentRequests, retries, retryBase, retryMax, timeoutMs] =
    counts.map(([, v]) => v) as [number, number, number, number, number, number, number, number]
  if (maxRequestBytes < blockSize) return invalid("maxRequestBytes", maxRequestBytes, "at least blockSize", location)
  if (maxConcurrentRequests < 1) return invalid("maxConcurrentRequests", maxConcurrentRequests, "at least 1", location)
  if (timeoutMs < 1) return invalid("timeoutMs", timeoutMs, "at least 1", location)
  const fetchImpl = options.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined)
  if (fetchImpl === undefined) return invalid("fetch", undefined, "no global fetch in this runtime; pass one", location)
  return {
    blockSize,
    cacheBytes,
    maxReadahead: Math.min(maxReadahead, Math.floor(cacheBytes / 4)),
    maxRequestBlocks: Math.floor(maxRequestBytes / blockSize),
    maxConcurrentRequests,
    retries,
    retryBaseDelayMs: retryBase,
    retryMaxDelayMs: Math.max(retryMax, retryBase),
    timeoutMs,
    conditionalRequests: options.conditionalRequests ?? true,
    headers: options.headers ?? {},
    credentials: options.credentials,
    fetch: fetchImpl
  }
}

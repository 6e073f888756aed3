/**
 * Read-only BlockStorage over HTTP Range requests (RFC 9110 §14), using the
 * global `fetch` only, so it runs in Node ≥ 20 and in browsers.
 *
 * Reads go through an aligned block cache (LRU, bounded in bytes). Missing
 * blocks of one read are merged into one Range request per contiguous run;
 * sequential access grows a readahead window; a block already being fetched
 * is awaited instead of fetched twice. Each request attempt has an idle
 * timeout and transient failures are retried with exponential backoff.
 * The ETag / Last-Modified seen at open are checked on every response (and
 * sent as `If-Match`), so a file replaced underneath fails with reason
 * `RemoteChanged` instead of mixing two versions.
 */
import { BlockStorage, type BlockStorageShape, checkRange, closedError, readOnlyError, StorageError } from "@qcow2/storage"
import { Deferred, Effect, Exit, Layer, Result, type Scope, Semaphore } from "effect"
import { BlockCache } from "@qcow2/storage"
import { type HttpStorageOptions, resolveOptions, type ResolvedOptions } from "./options.js"
import {
  type Counters,
  fetchRange,
  HeadRefused,
  ignoredRange,
  probeGet,
  probeHead,
  type ProbeResult,
  type RemoteFile,
  TransientFailure,
  type Transport
} from "./transport.js"

/** Counters of one open remote file, since it was opened. */
export interface HttpStats {
  /** HTTP requests sent, including the probe and retries. */
  readonly requests: number
  /** Response body bytes received (including bytes of failed attempts). */
  readonly bytesFetched: number
  /** Retries after transient failures. */
  readonly retries: number
  /** Blocks a read found in the cache. */
  readonly cacheHits: number
  /** Blocks a read had to fetch. */
  readonly cacheMisses: number
  /** Blocks a read found already being fetched by another read, and awaited. */
  readonly inflightHits: number
  /** Blocks fetched ahead of a read because access looked sequential. */
  readonly readaheadBlocks: number
  /** Blocks dropped from the cache to stay within its capacity. */
  readonly evictions: number
  /** Bytes currently held by the cache. */
  readonly cachedBytes: number
}

/** What the probe learned about the remote file when it was opened. */
export interface RemoteInfo {
  readonly size: number
  readonly etag: string | undefined
  readonly lastModified: string | undefined
  readonly acceptRanges: string | undefined
}

/** An open remote file: a read-only BlockStorage plus its counters. */
export interface HttpBlockStorage extends BlockStorageShape {
  /** A snapshot of the request and cache counters. */
  readonly stats: () => HttpStats
  readonly remote: RemoteInfo
}

/** One Range request in flight: blocks `[first, first + count)`. */
interface Pending {
  readonly first: number
  readonly count: number
  readonly deferred: Deferred.Deferred<ReadonlyArray<Uint8Array>, StorageError>
}

/**
 * Runs one attempt (a promise that observes the AbortSignal of the fiber)
 * and retries it after transient failures with exponential backoff and
 * jitter, honouring Retry-After up to `retryMaxDelayMs`.
 */
const withRetry = <A>(
  t: Transport,
  permits: Semaphore.Semaphore,
  attempt: (signal: AbortSignal) => Promise<A>
): Effect.Effect<A, StorageError> => {
  const once = permits.withPermit(
    Effect.tryPromise({
      try: attempt,
      catch: (cause) =>
        cause instanceof StorageError || cause instanceof TransientFailure
          ? cause
          : new StorageError({ reason: "Io", message: `unexpected failure: ${String(cause)}`, location: t.url, cause })
    })
  )
  const { retries, retryBaseDelayMs, retryMaxDelayMs } = t.options
  return Effect.gen(function* () {
    for (let attemptNo = 0; ; attemptNo++) {
      const result = yield* Effect.result(once)
      if (Result.isSuccess(result)) return result.success
      const failure = result.failure
      if (failure instanceof StorageError) return yield* Effect.fail(failure)
      if (attemptNo >= retries) {
        const e = failure.error
        return yield* Effect.fail(
          new StorageError({
            ...e,
            message: attemptNo === 0 ? e.message : `${e.message} (gave up after ${attemptNo + 1} attempts)`
          })
        )
      }
      t.counters.retries++
      const backoff = Math.min(retryMaxDelayMs, retryBaseDelayMs * 2 ** attemptNo)
      const jittered = backoff / 2 + Math.random() * (backoff / 2)
      const delay = failure.retryAfterMs === undefined ? jittered : Math.min(retryMaxDelayMs, failure.retryAfterMs)
      yield* Effect.sleep(Math.round(delay))
    }
  })
}

/** Validates a URL for fetch; relative URLs resolve against the page in browsers. */
const parseUrl = (url: string): string | StorageError => {
  const base = (globalThis as { location?: { href?: string } }).location?.href
  let parsed: URL
  try {
    parsed = new URL(url, base)
  } catch {
    return new StorageError({ reason: "NotFound", message: `not a valid URL: ${url}`, location: url })
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    return new StorageError({
      reason: "Unsupported",
      message: `unsupported URL scheme ${parsed.protocol} (only http: and https:)`,
      location: url
    })
  }
  return parsed.href
}

/** The cache, the in-flight map and the readahead state of one open file. */
class RemoteBlocks {
  readonly cache: BlockCache
  readonly inflight = new Map<number, Pending>()
  readonly blockCount: number
  closed = false
  /** Set once the remote file is seen to change; every later read fails with it. */
  failure: StorageError | undefined = undefined
  cacheHits = 0
  cacheMisses = 0
  inflightHits = 0
  readaheadBlocks = 0
  /** End of the previous read, for sequential detection (-1: none yet). */
  private lastEnd = -1
  /** Current readahead window in blocks. */
  private window = 0

  constructor(
    readonly t: Transport,
    readonly remote: RemoteFile,
    readonly permits: Semaphore.Semaphore,
    readonly scope: Scope.Scope
  ) {
    this.cache = new BlockCache(t.options.cacheBytes)
    this.blockCount = Math.ceil(remote.size / t.options.blockSize)
  }

  blockLength(index: number): number {
    const bs = this.t.options.blockSize
    return Math.min(bs, this.remote.size - index * bs)
  }

  /** Copies the part of block `index` that overlaps `[offset, offset + into.length)`. */
  copyBlock(index: number, block: Uint8Array, offset: number, into: Uint8Array): void {
    const blockStart = index * this.t.options.blockSize
    const from = Math.max(offset, blockStart)
    const to = Math.min(offset + into.length, blockStart + block.length)
    if (to > from) into.set(block.subarray(from - blockStart, to - blockStart), from - offset)
  }

  /**
   * Tells whether a read is sequential (it starts within one block of where
   * the previous read ended) and resets the readahead window when it is not.
   */
  private sequential(offset: number, end: number): boolean {
    const bs = this.t.options.blockSize
    const seq = this.lastEnd >= 0 && offset >= this.lastEnd - bs && offset <= this.lastEnd + bs
    this.lastEnd = seq ? Math.max(this.lastEnd, end) : end
    if (!seq) this.window = 0
    return seq
  }

  private available(index: number): boolean {
    return !this.cache.has(index) && !this.inflight.has(index)
  }

  /**
   * Plans a read synchronously: copies cached blocks, collects in-flight
   * ones to await, and registers new Range requests (merged runs of missing
   * blocks plus readahead) in the in-flight map before any other fiber can
   * run, so concurrent reads of a block share one request.
   */
  plan(offset: number, end: number, into: Uint8Array): { waits: Array<Pending>; started: Array<Pending> } {
    const bs = this.t.options.blockSize
    const first = Math.floor(offset / bs)
    const last = Math.floor((end - 1) / bs)
    const seq = this.sequential(offset, end)
    const waits: Array<Pending> = []
    const missing: Array<number> = []
    for (let b = first; b <= last; b++) {
      const block = this.cache.get(b)
      if (block !== undefined) {
        this.copyBlock(b, block, offset, into)
        this.cacheHits++
        continue
      }
      const pending = this.inflight.get(b)
      if (pending !== undefined) {
        if (waits[waits.length - 1] !== pending) waits.push(pending)
        this.inflightHits++
        continue
      }
      missing.push(b)
      this.cacheMisses++
    }
    const started: Array<Pending> = []
    if (missing.length === 0) return { waits, started }
    let ahead = 0
    const maxWindow = Math.floor(this.t.options.maxReadahead / bs)
    if (seq && maxWindow > 0) {
      this.window = this.window === 0 ? 1 : Math.min(maxWindow, this.window * 2)
      const lastMissing = missing[missing.length - 1]!
      if (lastMissing === last) {
        for (let b = last + 1; b < this.blockCount && ahead < this.window && this.available(b); b++) {
          missing.push(b)
          ahead++
        }
      }
    }
    this.readaheadBlocks += ahead
    const maxRun = this.t.options.maxRequestBlocks
    let runStart = missing[0]!
    let runLength = 1
    const flush = () => {
      const pending: Pending = { first: runStart, count: runLength, deferred: Deferred.makeUnsafe() }
      for (let b = runStart; b < runStart + runLength; b++) this.inflight.set(b, pending)
      started.push(pending)
      if (runStart <= last) waits.push(pending)
    }
    for (let i = 1; i < missing.length; i++) {
      const b = missing[i]!
      if (b === runStart + runLength && runLength < maxRun) {
        runLength++
      } else {
        flush()
        runStart = b
        runLength = 1
      }
    }
    flush()
    return { waits, started }
  }

  /** The fiber body of one Range request: fetch, fill the cache, wake the waiters. */
  run(pending: Pending): Effect.Effect<void> {
    const bs = this.t.options.blockSize
    const start = pending.first * bs
    const end = Math.min(this.remote.size, (pending.first + pending.count) * bs)
    const lengths = Array.from({ length: pending.count }, (_, i) => this.blockLength(pending.first + i))
    return withRetry(this.t, this.permits, (signal) => fetchRange(this.t, this.remote, start, end, lengths, signal)).pipe(
      Effect.onExit((exit) =>
        Effect.sync(() => {
          for (let b = pending.first; b < pending.first + pending.count; b++) {
            if (this.inflight.get(b) === pending) this.inflight.delete(b)
          }
          if (Exit.isSuccess(exit)) {
            if (!this.closed && this.failure === undefined) {
              exit.value.forEach((block, i) => this.cache.set(pending.first + i, block))
            }
            Deferred.doneUnsafe(pending.deferred, exit)
            return
          }
          const error = Exit.findErrorOption(exit)
          if (error._tag === "Some") {
            if ((error.value.reason === "RemoteChanged" || error.value.reason === "Unsupported") && this.failure === undefined) {
              this.failure = error.value
              this.cache.clear()
            }
            Deferred.doneUnsafe(pending.deferred, Exit.fail(error.value))
          } else {
            Deferred.doneUnsafe(pending.deferred, Exit.fail(this.closedError()))
          }
        })
      ),
      Effect.ignore
    )
  }

  closedError(operation = "read"): StorageError {
    return closedError(this.t.url, operation)
  }

  close(): void {
    this.closed = true
    this.cache.clear()
    for (const pending of this.inflight.values()) Deferred.doneUnsafe(pending.deferred, Exit.fail(this.closedError()))
    this.inflight.clear()
  }

  read(offset: number, into: Uint8Array): Effect.Effect<void, StorageError> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        const length = into.length
        const invalid = checkRange(this.t.url, "read", offset, length)
        if (invalid !== undefined) return Effect.fail(invalid)
        if (this.closed) return Effect.fail(this.closedError())
        if (this.failure !== undefined) return Effect.fail(this.failure)
        const size = this.remote.size
        const end = Math.min(offset + length, size)
        if (end < offset + length) into.fill(0, Math.max(0, end - offset))
        if (offset >= end) return Effect.void
        const { waits, started } = this.plan(offset, end, into)
        if (waits.length === 0 && started.length === 0) return Effect.void
        const forks = Effect.forEach(started, (pending) => Effect.forkIn(this.run(pending), this.scope), {
          discard: true
        })
        const awaitAll = Effect.forEach(
          waits,
          (pending) =>
            Effect.map(Deferred.await(pending.deferred), (blocks) => {
              blocks.forEach((block, i) => this.copyBlock(pending.first + i, block, offset, into))
            }),
          { concurrency: "unbounded", discard: true }
        )
        return Effect.andThen(forks, restore(awaitAll))
      })
    )
  }
}

/**
 * Opens a remote file for reading over HTTP(S): probes it (HEAD, or a
 * `Range: bytes=0-0` GET when HEAD is refused) and returns a read-only
 * BlockStorage whose requests and cache live until the scope closes.
 *
 * Fails with reason `NotFound` (404/410), `PermissionDenied` (401/403),
 * `Unsupported` (a server that ignores Range for a file larger than one
 * block, or hides the size), or `Io` (network failure after retries).
 */
export const openHttp = (
  url: string,
  options: HttpStorageOptions = {}
): Effect.Effect<HttpBlockStorage, StorageError, Scope.Scope> =>
  Effect.gen(function* () {
    const href = parseUrl(url)
    if (href instanceof StorageError) return yield* Effect.fail(href)
    const resolved: ResolvedOptions | StorageError = resolveOptions(options, href)
    if (resolved instanceof StorageError) return yield* Effect.fail(resolved)
    const counters: Counters = { requests: 0, bytesFetched: 0, retries: 0 }
    const t: Transport = { url: href, options: resolved, counters }
    const permits = Semaphore.makeUnsafe(resolved.maxConcurrentRequests)
    const head = yield* withRetry(t, permits, (signal) => probeHead(t, signal))
    const probe: ProbeResult = head === HeadRefused ? yield* withRetry(t, permits, (signal) => probeGet(t, signal)) : head
    if (probe.acceptRanges === "none" && probe.size > resolved.blockSize && probe.wholeFile === undefined) {
      return yield* Effect.fail(ignoredRange(t, probe.size))
    }
    const etag = probe.validators.etag
    const remote: RemoteFile = {
      size: probe.size,
      validators: probe.validators,
      ifMatch: resolved.conditionalRequests && etag !== undefined && !etag.startsWith("W/") ? etag : undefined
    }
    const scope = yield* Effect.scope
    const blocks = new RemoteBlocks(t, remote, permits, scope)
    yield* Effect.addFinalizer(() => Effect.sync(() => blocks.close()))
    if (probe.wholeFile !== undefined && probe.wholeFile.length > 0) blocks.cache.set(0, probe.wholeFile)
    const whenOpen = <A>(operation: string, f: () => Effect.Effect<A, StorageError>) =>
      Effect.suspend(() => (blocks.closed ? Effect.fail(blocks.closedError(operation)) : f()))
    const storage: HttpBlockStorage = {
      location: href,
      capabilities: { readOnly: true, discard: false, alignment: 1 },
      remote: {
        size: probe.size,
        etag,
        lastModified: probe.validators.lastModified,
        acceptRanges: probe.acceptRanges
      },
      read: (offset, into) => blocks.read(offset, into),
      write: (offset, data) => whenOpen("write", () => Effect.fail(readOnlyError(href, "write", offset, data.length))),
      resize: () => whenOpen("resize", () => Effect.fail(readOnlyError(href, "resize"))),
      discard: (offset, length) => whenOpen("discard", () => Effect.fail(readOnlyError(href, "discard", offset, length))),
      flush: () => whenOpen("flush", () => Effect.void),
      size: () => whenOpen("size", () => Effect.succeed(probe.size)),
      stats: () => ({
        requests: counters.requests,
        bytesFetched: counters.bytesFetched,
        retries: counters.retries,
        cacheHits: blocks.cacheHits,
        cacheMisses: blocks.cacheMisses,
        inflightHits: blocks.inflightHits,
        readaheadBlocks: blocks.readaheadBlocks,
        evictions: blocks.cache.evictions,
        cachedBytes: blocks.cache.bytes
      })
    }
    return storage
  })

/** A Layer providing BlockStorage for one remote file, open for the layer's lifetime. */
export const layer = (url: string, options?: HttpStorageOptions): Layer.Layer<BlockStorage, StorageError> =>
  Layer.effect(BlockStorage, openHttp(url, options))

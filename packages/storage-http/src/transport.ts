/**
 * One HTTP request attempt at a time, as plain promises over `fetch`:
 * the probe (HEAD, or `Range: bytes=0-0` GET), Range GETs streamed into
 * block buffers, an idle timeout, status classification and validator
 * checks. Retrying, caching and concurrency live in HttpStorage.ts.
 *
 * Semantics follow RFC 9110: §14 (Range requests, 206, Content-Range, 416,
 * If-Range), §13.1.1 (If-Match, 412), §8.8 (ETag, Last-Modified, weak vs
 * strong comparison) and §10.2.3 (Retry-After).
 */
import { StorageError } from "@qcow2/storage"
import type { ResolvedOptions } from "./options.js"

/** A failure worth retrying (network error, timeout, 408, 429, 5xx, truncated body). */
export class TransientFailure {
  constructor(
    readonly error: StorageError,
    readonly retryAfterMs: number | undefined
  ) {}
}

/** Counters shared by all requests of one open file. */
export interface Counters {
  requests: number
  bytesFetched: number
  retries: number
}

/** What identifies the version of the remote file that was opened. */
export interface Validators {
  readonly etag: string | undefined
  readonly lastModified: string | undefined
}

export interface Transport {
  readonly url: string
  readonly options: ResolvedOptions
  readonly counters: Counters
}

/** What the probe learned about the remote file. */
export interface ProbeResult {
  readonly size: number
  readonly validators: Validators
  /** `Accept-Ranges` as sent (lower case), undefined when absent or hidden by CORS. */
  readonly acceptRanges: string | undefined
  /** True when a 206 answer proved that Range requests work. */
  readonly rangesConfirmed: boolean
  /** The whole file, when a GET answered 200 with a body no larger than one block. */
  readonly wholeFile: Uint8Array | undefined
}

/** The HEAD request was refused (405, 501, 403 of a GET-only signed URL, …) or gave no size. */
export const HeadRefused = Symbol("HeadRefused")

const ioError = (t: Transport, message: string, offset?: number, length?: number, cause?: unknown) =>
  new StorageError({ reason: "Io", message, location: t.url, offset, length, cause })

const rangeText = (start: number, end: number) => `bytes ${start}-${end - 1}`

/** Parses `Retry-After` (seconds or an HTTP date) into milliseconds. */
const retryAfter = (response: Response): number | undefined => {
  const value = response.headers.get("retry-after")
  if (value === null) return undefined
  const trimmed = value.trim()
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000
  const date = Date.parse(trimmed)
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now())
}

/** Maps a status that is neither 200 nor 206 to an error. */
const statusFailure = (
  t: Transport,
  response: Response,
  what: string,
  offset?: number,
  length?: number
): StorageError | TransientFailure => {
  const status = response.status
  const text = `${what}: HTTP ${status}${response.statusText === "" ? "" : ` ${response.statusText}`}`
  const make = (reason: StorageError["reason"], message: string) =>
    new StorageError({ reason, message, location: t.url, offset, length })
  if (status === 404 || status === 410) return make("NotFound", `${text} (no such remote file)`)
  if (status === 401 || status === 403) return make("PermissionDenied", `${text} (access denied)`)
  if (status === 412) {
    return make("RemoteChanged", `${text}: the remote file no longer matches the ETag seen when it was opened`)
  }
  if (status === 408 || status === 429 || status >= 500) {
    return new TransientFailure(make("Io", text), retryAfter(response))
  }
  return make("Io", `${text} (unexpected status)`)
}

/** Strips the weak prefix: validators are compared with the weak comparison (RFC 9110 §8.8.3.2). */
const opaqueTag = (etag: string) => (etag.startsWith("W/") ? etag.slice(2) : etag)

/** Reads the validators of a response. */
export const validatorsOf = (response: Response): Validators => ({
  etag: response.headers.get("etag") ?? undefined,
  lastModified: response.headers.get("last-modified") ?? undefined
})

/**
 * Describes how `response` shows a different version of the file than
 * `first`, or returns undefined. ETags win; Last-Modified is compared only
 * when neither side has an ETag. A validator missing on one side (a proxy
 * or CORS hiding it) is not a change.
 */
export const validatorChange = (first: Validators, response: Response): string | undefined => {
  const now = validatorsOf(response)
  if (first.etag !== undefined && now.etag !== undefined) {
    return opaqueTag(first.etag) === opaqueTag(now.etag)
      ? undefined
      : `ETag changed from ${first.etag} to ${now.etag}`
  }
  if (first.etag === undefined && now.etag === undefined && first.lastModified !== undefined && now.lastModified !== undefined) {
    return first.lastModified === now.lastModified
      ? undefined
      : `Last-Modified changed from ${first.lastModified} to ${now.lastModified}`
  }
  return undefined
}

const remoteChanged = (t: Transport, detail: string, offset?: number, length?: number) =>
  new StorageError({
    reason: "RemoteChanged",
    message: `the remote file changed after it was opened (${detail}); reopen it to read the new version`,
    location: t.url,
    offset,
    length
  })

interface ContentRange {
  /** First byte, or undefined for the unsatisfied form `bytes *\/size`. */
  readonly first: number | undefined
  readonly last: number | undefined
  /** Total size, or undefined for `*`. */
  readonly total: number | undefined
}

/** Parses `Content-Range` (RFC 9110 §14.4). */
export const parseContentRange = (value: string | null): ContentRange | undefined => {
  if (value === null) return undefined
  const satisfied = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value)
  if (satisfied !== null) {
    const total = satisfied[3] === "*" ? undefined : Number(satisfied[3])
    return { first: Number(satisfied[1]), last: Number(satisfied[2]), total }
  }
  const unsatisfied = /^\s*bytes\s+\*\/(\d+)\s*$/i.exec(value)
  if (unsatisfied !== null) return { first: undefined, last: undefined, total: Number(unsatisfied[1]) }
  return undefined
}

const encodedBody = (response: Response): string | undefined => {
  const encoding = response.headers.get("content-encoding")
  if (encoding === null) return undefined
  const trimmed = encoding.trim().toLowerCase()
  return trimmed === "" || trimmed === "identity" ? undefined : trimmed
}

const contentLength = (response: Response): number | undefined => {
  const value = response.headers.get("content-length")
  if (value === null || !/^\s*\d+\s*$/.test(value)) return undefined
  const n = Number(value)
  return Number.isSafeInteger(n) ? n : undefined
}

const cancelBody = (response: Response) => {
  if (response.body !== null) response.body.cancel().catch(() => undefined)
}

/**
 * One request with an idle timeout: the timer runs while waiting for the
 * headers and restarts on every body chunk. `signal` is the caller's
 * (Effect interruption); it aborts the request too.
 */
class Exchange {
  private readonly controller = new AbortController()
  private timer: ReturnType<typeof setTimeout> | undefined
  timedOut = false

  constructor(
    private readonly t: Transport,
    private readonly signal: AbortSignal
  ) {}

  private readonly onAbort = () => this.controller.abort(this.signal.reason)

  arm(): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timedOut = true
      this.controller.abort()
    }, this.t.options.timeoutMs)
  }

  finish(): void {
    clearTimeout(this.timer)
    this.signal.removeEventListener("abort", this.onAbort)
  }

  /** Turns a rejection of fetch or of a body read into a retryable failure (or rethrows an interruption). */
  failure(cause: unknown, what: string, offset?: number, length?: number): unknown {
    if (this.signal.aborted) return cause
    const detail = this.timedOut
      ? `no response for ${this.t.options.timeoutMs} ms`
      : `network error: ${cause instanceof Error ? `${cause.message}${cause.cause instanceof Error ? ` (${cause.cause.message})` : ""}` : String(cause)}`
    return new TransientFailure(ioError(this.t, `${what}: ${detail}`, offset, length, cause), undefined)
  }

  async send(method: "GET" | "HEAD", extra: Record<string, string>, what: string): Promise<Response> {
    if (this.signal.aborted) throw this.signal.reason
    this.signal.addEventListener("abort", this.onAbort, { once: true })
    const { options } = this.t
    const headers: Record<string, string> = { "accept-encoding": "identity", ...options.headers, ...extra }
    const init: RequestInit = { method, headers, signal: this.controller.signal, redirect: "follow" }
    if (options.credentials !== undefined) init.credentials = options.credentials
    this.t.counters.requests++
    this.arm()
    try {
      return await options.fetch(this.t.url, init)
    } catch (cause) {
      this.finish()
      throw this.failure(cause, what)
    }
  }

  /**
   * Streams the body to `sink`, which receives each chunk with its position;
   * fails when the body is longer than `limit` (the rest is not downloaded)
   * and, when `exact`, when it is shorter.
   */
  async readBody(
    response: Response,
    limit: number,
    exact: boolean,
    sink: (chunk: Uint8Array, position: number) => void,
    what: string,
    offset?: number
  ): Promise<number> {
    let received = 0
    try {
      if (response.body === null) {
        if (exact && limit > 0) throw new Error("the response has no body")
        return 0
      }
      const reader = response.body.getReader()
      try {
        for (;;) {
          this.arm()
          const { done, value } = await reader.read()
          if (done) break
          this.t.counters.bytesFetched += value.length
          if (received + value.length > limit) {
            await reader.cancel().catch(() => undefined)
            throw ioError(this.t, `${what}: the server sent more than the ${limit} bytes asked for`, offset, limit)
          }
          sink(value, received)
          received += value.length
        }
      } finally {
        reader.releaseLock()
      }
    } catch (cause) {
      if (cause instanceof StorageError) throw cause
      throw this.failure(cause, what, offset, limit)
    } finally {
      this.finish()
    }
    if (exact && received !== limit) {
      throw new TransientFailure(
        ioError(this.t, `${what}: the body ended after ${received} of ${limit} bytes`, offset, limit),
        undefined
      )
    }
    return received
  }
}

/**
 * HEAD request. Resolves to `HeadRefused` when the server refuses HEAD or
 * gives no usable size, so the caller falls back to {@link probeGet}.
 */
export const probeHead = async (t: Transport, signal: AbortSignal): Promise<ProbeResult | typeof HeadRefused> => {
  const ex = new Exchange(t, signal)
  const response = await ex.send("HEAD", {}, "HEAD")
  ex.finish()
  cancelBody(response)
  if (!response.ok) {
    const failure = statusFailure(t, response, "HEAD")
    if (failure instanceof TransientFailure && response.status !== 501) throw failure
    if (failure instanceof StorageError && failure.reason === "NotFound") throw failure
    return HeadRefused
  }
  const size = contentLength(response)
  if (size === undefined || encodedBody(response) !== undefined) return HeadRefused
  const acceptRanges = response.headers.get("accept-ranges")?.trim().toLowerCase()
  return {
    size,
    validators: validatorsOf(response),
    acceptRanges,
    rangesConfirmed: false,
    wholeFile: undefined
  }
}

/**
 * `GET` with `Range: bytes=0-0`: a 206 answer gives the size in
 * Content-Range; a 416 (`bytes *\/0`) means an empty file; a 200 means
 * Range is ignored, acceptable only for a file of at most one block, whose
 * body is then kept.
 */
export const probeGet = async (t: Transport, signal: AbortSignal): Promise<ProbeResult> => {
  const ex = new Exchange(t, signal)
  const what = "GET bytes=0-0 (probe)"
  const response = await ex.send("GET", { range: "bytes=0-0" }, what)
  const validators = validatorsOf(response)
  const acceptRanges = response.headers.get("accept-ranges")?.trim().toLowerCase()
  if (response.status === 206) {
    const range = parseContentRange(response.headers.get("content-range"))
    if (range === undefined || range.total === undefined) {
      ex.finish()
      cancelBody(response)
      throw new StorageError({
        reason: "Unsupported",
        message:
          "the server answered a Range request without a readable Content-Range total, so the file size is unknown " +
          "(cross-origin servers must list Content-Range in Access-Control-Expose-Headers, or allow HEAD)",
        location: t.url
      })
    }
    await ex.readBody(response, 1, false, () => undefined, what, 0)
    return { size: range.total, validators, acceptRanges, rangesConfirmed: true, wholeFile: undefined }
  }
  if (response.status === 416) {
    ex.finish()
    cancelBody(response)
    const range = parseContentRange(response.headers.get("content-range"))
    if (range?.total === 0) return { size: 0, validators, acceptRanges, rangesConfirmed: true, wholeFile: undefined }
    throw ioError(t, `${what}: HTTP 416 with Content-Range ${response.headers.get("content-range") ?? "(none)"}`)
  }
  if (response.status === 200) {
    const limit = t.options.blockSize
    const length = contentLength(response)
    if (encodedBody(response) !== undefined || (length !== undefined && length > limit)) {
      ex.finish()
      cancelBody(response)
      throw ignoredRange(t, length)
    }
    const chunks: Array<Uint8Array> = []
    let received: number
    try {
      received = await ex.readBody(response, limit, false, (chunk) => chunks.push(chunk.slice()), what, 0)
    } catch (cause) {
      if (cause instanceof StorageError && cause.reason === "Io") throw ignoredRange(t, undefined)
      throw cause
    }
    if (length !== undefined && received !== length) {
      throw new TransientFailure(ioError(t, `${what}: the body ended after ${received} of ${length} bytes`), undefined)
    }
    const whole = new Uint8Array(received)
    let at = 0
    for (const chunk of chunks) {
      whole.set(chunk, at)
      at += chunk.length
    }
    return { size: received, validators, acceptRanges, rangesConfirmed: false, wholeFile: whole }
  }
  ex.finish()
  cancelBody(response)
  throw statusFailure(t, response, what)
}

/** The error for a server that answers a Range request with the whole (large) file. */
export const ignoredRange = (t: Transport, size: number | undefined) =>
  new StorageError({
    reason: "Unsupported",
    message:
      `the server ignores HTTP Range requests (it answered 200 with the whole file${size === undefined ? "" : `, ${size} bytes`}); ` +
      `refusing to download a file larger than one block (${t.options.blockSize} bytes) for every read. ` +
      "Serve it from a server that supports byte ranges (nginx, Apache, S3, most CDNs)",
    location: t.url
  })

/** The state a Range GET is checked against. */
export interface RemoteFile {
  readonly size: number
  readonly validators: Validators
  /** Send `If-Match` with this strong ETag, if defined. */
  readonly ifMatch: string | undefined
}

/**
 * `GET` of `[start, end)` (block aligned, inside the file) streamed into
 * fresh buffers of `blockLengths` bytes each. A 200 answer is accepted
 * only when it is the whole file and the file fits in one block.
 */
export const fetchRange = async (
  t: Transport,
  remote: RemoteFile,
  start: number,
  end: number,
  blockLengths: ReadonlyArray<number>,
  signal: AbortSignal
): Promise<Array<Uint8Array>> => {
  const ex = new Exchange(t, signal)
  const what = `GET ${rangeText(start, end)}`
  const length = end - start
  const headers: Record<string, string> = { range: `bytes=${start}-${end - 1}` }
  if (remote.ifMatch !== undefined) headers["if-match"] = remote.ifMatch
  const response = await ex.send("GET", headers, what)
  const fail = (error: unknown): never => {
    ex.finish()
    cancelBody(response)
    throw error
  }
  if (response.status !== 206 && response.status !== 200) {
    if (response.status === 416) {
      const total = parseContentRange(response.headers.get("content-range"))?.total
      fail(remoteChanged(t, `the server says ${what} is out of range${total === undefined ? "" : `: the file has ${total} bytes`}, it had ${remote.size}`, start, length))
    }
    fail(statusFailure(t, response, what, start, length))
  }
  const change = validatorChange(remote.validators, response)
  if (change !== undefined) fail(remoteChanged(t, change, start, length))
  if (encodedBody(response) !== undefined) {
    fail(new StorageError({
      reason: "Unsupported",
      message: `${what}: the server sent a Content-Encoding (${encodedBody(response)}) on a byte range`,
      location: t.url,
      offset: start,
      length
    }))
  }
  if (response.status === 200) {
    const total = contentLength(response)
    if (total !== undefined && total !== remote.size) fail(remoteChanged(t, `size changed from ${remote.size} to ${total} bytes`, start, length))
    if (start !== 0 || end !== remote.size || remote.size > t.options.blockSize) fail(ignoredRange(t, total))
  } else {
    const range = parseContentRange(response.headers.get("content-range"))
    if (range !== undefined) {
      if (range.total !== undefined && range.total !== remote.size) {
        fail(remoteChanged(t, `size changed from ${remote.size} to ${range.total} bytes`, start, length))
      }
      if (range.first !== start || range.last !== end - 1) {
        fail(ioError(t, `${what}: the server sent ${response.headers.get("content-range")} instead`, start, length))
      }
    }
  }
  const blocks = blockLengths.map((n) => new Uint8Array(n))
  const blockSize = t.options.blockSize
  await ex.readBody(
    response,
    length,
    true,
    (chunk, position) => {
      let done = 0
      while (done < chunk.length) {
        const at = position + done
        const block = blocks[Math.floor(at / blockSize)]!
        const into = at % blockSize
        const n = Math.min(chunk.length - done, block.length - into)
        block.set(chunk.subarray(done, done + n), into)
        done += n
      }
    },
    what,
    start
  )
  return blocks
}

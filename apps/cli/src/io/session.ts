/**
 * The image a qemu-io run works on, owned here: qemu-io opens it from the
 * command line or with `open`, drops it with `close`, changes its mode with
 * `reopen`, and closes it (flushed) at exit. Opening follows qemu-io.c
 * openfile(): one image at a time, its messages as error_report prints them.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, Scope, Semaphore } from "effect"
import { createImage, ImageError, openImage, type Image, type ImageFormat } from "@qcow2/image"
import { driverReport, type ImageEnv } from "../env.js"
import { strerror } from "../errors.js"
import { errorReport } from "../progname.js"
import { openNode } from "../file-node.js"
import { quorumTopImage } from "../quorum-node.js"
import { copyOnRead } from "./copy-on-read.js"
import { compressFilter, compressRefusal } from "../compress-filter.js"
import { withBlkdebugLimits } from "./blkdebug-limits.js"
import { withImageBlkdebug } from "./blkdebug-image.js"
import { AioRequests } from "./aio-requests.js"
import { print } from "../output.js"
import { makeBlkdebugBreakpoints, type BlkdebugBreakpoints } from "@qcow2/storage/blkdebug"
import { checkBackingOptions, checkCacheOptions, protocolRefusal, resolveImageSpec, type BlockOptions } from "../qemu-filename.js"
import type { Secrets } from "../secrets.js"

const isImageFormat = (name: string | undefined): name is ImageFormat => name === "qcow2" || name === "raw" || name === "luks"

/** qemu-io's cache modes (bdrv_parse_cache_mode). */
export type CacheMode = "writethrough" | "writeback" | "none" | "directsync" | "unsafe"

/** A cache mode by name ("off" is "none"); undefined when QEMU does not know it. */
export const parseCacheMode = (text: string): CacheMode | undefined => {
  switch (text) {
    case "writethrough":
    case "writeback":
    case "none":
    case "directsync":
    case "unsafe":
      return text
    case "off":
      return "none"
    default:
      return undefined
  }
}

/** Whether the mode bypasses the host cache (cache.direct), which aio=native requires. */
const isDirect = (mode: CacheMode): boolean => mode === "none" || mode === "directsync"

/** Whether every write is flushed before it is reported done (the guest sees a write-through cache). */
const isWritethrough = (mode: CacheMode): boolean => mode === "writethrough" || mode === "directsync"

/** qemu-io's aio modes (-i). */
export type AioMode = "threads" | "native" | "io_uring"

export const parseAioMode = (text: string): AioMode | undefined =>
  text === "threads" || text === "native" || text === "io_uring" ? text : undefined

/** Discard modes (-d): "ignore"/"off" or "unmap"/"on"; this toolkit always passes discards. */
export const isDiscardMode = (text: string): boolean => ["ignore", "off", "unmap", "on"].includes(text)

/** How to open an image: qemu-io's options and `open`'s flags. */
export interface OpenRequest {
  /** The name as given; undefined when only options (-o, --image-opts) name the image. */
  readonly name: string | undefined
  readonly options: BlockOptions
  readonly format: string | undefined
  readonly readOnly: boolean
  /** -s: writes go to a temporary overlay, dropped at close. */
  readonly snapshot: boolean
  readonly copyOnRead: boolean
  /** -U: share the image with every other user (read-only opens; QEMU's force-share). */
  readonly forceShare: boolean
  readonly cache: CacheMode
  readonly aio: AioMode
}

/**
 * The image with a flush after every write (QEMU's writethrough: its block
 * layer sets FUA on each write, write-zeroes and compressed write, and a
 * qcow2 image emulates FUA with a flush), so a write is reported done only
 * once it is durable. A discard is not flushed, as bdrv_co_pdiscard sets
 * no FUA (iotest 060: a discard's L2 change that a later fatal corruption
 * event keeps in the cache never reaches the disk). Flushes go one at a
 * time, in the order they were asked for, as QEMU's bdrv_co_flush
 * serialises them, and the next one starts only after the request whose
 * flush ended has completed (QEMU wakes the next flusher once the current
 * coroutine yields): of two writes in flight, the one that flushed first
 * completes first.
 */
const writethrough = (image: Image): Image => {
  const flushing = Semaphore.makeUnsafe(1)
  const flushed = <A>(effect: Effect.Effect<A, ImageError>) => Effect.tap(effect, () => flushing.withPermits(1)(Effect.andThen(Effect.yieldNow, image.flush())))
  const area = image.vmState
  const wrapped: Image = Object.create(image)
  return Object.assign(wrapped, {
    write: (offset: number, data: Uint8Array) => flushed(image.write(offset, data)),
    writeZeroes: (offset: number, length: number, options?: { readonly unmap?: boolean }) => flushed(image.writeZeroes(offset, length, options)),
    writeCompressed: (offset: number, data: Uint8Array) => flushed(image.writeCompressed(offset, data)),
    truncate: (size: number, options?: Parameters<Image["truncate"]>[1]) => flushed(image.truncate(size, options)),
    ...(area !== undefined ? { vmState: { read: area.read, write: (pos: number, data: Uint8Array) => flushed(area.write(pos, data)) } } : {})
  })
}

interface OpenedImage {
  /** What commands use: the image, or its write-through view. */
  readonly image: Image
  /** The image itself (flushed at close). */
  readonly raw: Image
  readonly scope: Scope.Closeable
  readonly request: OpenRequest
  /** The temporary overlay of -s, removed at close. */
  readonly overlay: string | undefined
  /** The image under the write-through view: `raw` with the request filters of a blkdebug node. */
  readonly limited: Image
  /** The filter nodes above the write-through view (compress, copy-on-read), put back by `reopen`. */
  readonly above: (image: Image) => Image
  /** The top node is QEMU's compress filter (qemu-io `info` names it). */
  readonly compress: boolean
  /** The top node is a quorum (qemu-io `info` names it). */
  readonly quorumTop: boolean
  /** The breakpoints of the first blkdebug node from the top (qemu-io's `break` acts on it), if there is one. */
  readonly breakpoints: BlkdebugBreakpoints | undefined
}

/** The changes `reopen` asks for. */
export interface ReopenRequest {
  readonly readOnly?: boolean
  readonly cache?: CacheMode
  readonly options: BlockOptions
}

/** Options `reopen -o` may change (the others: "Cannot change the option"). */
const REOPENABLE = new Set(["lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "cache-size", "l2-cache-size", "refcount-cache-size", "cache-clean-interval", "discard", "detect-zeroes"])

/** Options `reopen -o` takes as booleans, checked before anything else. */
const BOOLEAN_OPTIONS = new Set(["read-only", "auto-read-only", "cache.direct", "cache.no-flush"])

/** What option `key` is now (node names as opened, drivers as detected): `reopen -o` may repeat it, not change it. */
const currentOption = (opened: OpenedImage, key: string): string | null | undefined => {
  switch (key) {
    case "driver":
      return opened.raw.format
    case "file.driver":
      return "file"
    case "backing.driver":
      return opened.raw.backing?.format
    default:
      return opened.request.options.get(key)
  }
}

/** The image's own close: a flush, then the driver's write-back; false when anything could not be written. */
const closeImage = (opened: OpenedImage): Effect.Effect<boolean> =>
  Effect.gen(function* () {
    const image = opened.raw
    if (image.readOnly) return true
    const flushed = opened.request.cache === "unsafe" ? true : (yield* Effect.result(image.flush()))._tag === "Success"
    const failures = image.close !== undefined ? yield* image.close() : []
    for (const failure of failures) errorReport(`Failed to flush the ${failure.cache} cache: ${strerror(failure.error)}`)
    return flushed && failures.length === 0
  })

export class IoSession {
  private opened: OpenedImage | undefined
  /** Set by `quit`: no further commands run. */
  quitRequested = false
  /** The aio requests in flight on the open image. */
  readonly requests = new AioRequests(() => this.opened?.breakpoints)

  /**
   * `secrets`: --object passphrases; `imageOpts`: --image-opts, under which
   * `open` takes an option string in place of a file name.
   */
  constructor(
    private readonly secrets: Secrets,
    readonly imageOpts: boolean
  ) {}

  /** The filter driver of the top node when it is QEMU's compress filter (qemu-io `info` prints its name). */
  get filterDriver(): "compress" | "quorum" | undefined {
    return this.opened?.compress === true ? "compress" : this.opened?.quorumTop === true ? "quorum" : undefined
  }

  /** The open image, as commands see it. */
  get image(): Image | undefined {
    return this.opened?.image
  }

  /** The breakpoints of the image's blkdebug node; undefined when it has none. */
  get breakpoints(): BlkdebugBreakpoints | undefined {
    return this.opened?.breakpoints
  }

  /** Opens `request`; false after reporting why not (qemu-io's "can't open device …"). */
  open(request: OpenRequest): Effect.Effect<boolean, never, ImageEnv> {
    return Effect.suspend(() => {
      if (this.opened !== undefined) {
        errorReport("file open already, try 'help close'")
        return Effect.succeed(false)
      }
      const prefix = request.name !== undefined ? `can't open device ${request.name}: ` : "can't open: "
      const refuse = (message: string) => Effect.sync(() => (errorReport(prefix + message), false))
      if (request.readOnly && request.copyOnRead) return refuse("Can't use copy-on-read on read-only device")
      if (request.aio === "native" && !isDirect(request.cache)) {
        return refuse("aio=native was specified, but it requires cache.direct=on, which was not specified.")
      }
      const resolved = resolveImageSpec(request.name, request.options, request.format)
      if (!resolved.ok) return refuse(resolved.message)
      const spec = resolved.spec
      if (spec.copyOnReadFilter === true && request.readOnly) return refuse("Block node is read-only")
      const wrongType = spec.protocol !== undefined ? protocolRefusal(spec.protocol, spec.file, request.readOnly || request.snapshot) : undefined
      if (wrongType !== undefined) return refuse(wrongType)
      let passphrase = this.secrets.passphrase
      if (spec.keySecret !== undefined) {
        passphrase = this.secrets.byId.get(spec.keySecret)
        if (passphrase === undefined) return refuse(`No secret with id '${spec.keySecret}'`)
      }
      const lazyOption = request.options.get("lazy-refcounts")
      const lazyRefcounts = lazyOption === "on" ? true : lazyOption === "off" ? false : undefined
      // overlap-check=all turns every check on; overlap-check.inactive-l2 overrides it.
      const inactiveL2 = request.options.get("overlap-check.inactive-l2") ?? (request.options.get("overlap-check") === "all" ? "on" : "off")
      const backingPassphrase = spec.backingKeySecret !== undefined ? this.secrets.byId.get(spec.backingKeySecret) : undefined
      if (spec.backingKeySecret !== undefined && backingPassphrase === undefined) return refuse(`No secret with id '${spec.backingKeySecret}'`)
      const options = {
        report: driverReport,
        readOnly: request.readOnly || request.snapshot,
        forceShare: request.forceShare,
        ...(spec.format !== undefined ? { format: spec.format } : {}),
        ...(passphrase !== undefined ? { passphrase } : {}),
        ...(spec.noBacking ? { openBacking: false } : {}),
        ...(isImageFormat(spec.backingFormat) ? { backingFormat: spec.backingFormat } : {}),
        ...(backingPassphrase !== undefined ? { backingPassphrase } : {}),
        ...(lazyRefcounts !== undefined ? { lazyRefcounts } : {}),
        ...(inactiveL2 === "on" ? { checksInactiveL2: true } : {})
      }
      // A blkdebug node over the image itself comes first from the top; the format driver's events never reach it.
      const breakpoints = spec.blkdebug !== undefined || spec.imageBlkdebug !== undefined ? makeBlkdebugBreakpoints(print) : undefined
      const node = breakpoints !== undefined && spec.imageBlkdebug === undefined ? { ...spec, breakpoints } : spec
      const self = this
      return Effect.gen(function* () {
        const scope = yield* Scope.make()
        const opened = yield* Effect.result(
          Scope.provide(scope)(
            Effect.gen(function* () {
              const opened = yield* openNode(node, options.readOnly, openImage(spec.file, options))
              const base = spec.quorumTop === true ? quorumTopImage(opened) : opened
              const backingMismatch = checkBackingOptions(spec, base)
              if (backingMismatch !== undefined) return yield* new ImageError({ reason: "Unsupported", message: backingMismatch })
              const badCache = base.format === "qcow2" ? checkCacheOptions(request.options, base.clusterSize) : undefined
              if (badCache !== undefined) return yield* new ImageError({ reason: "InvalidArgument", message: badCache })
              const uncompressible = spec.compressFilter === true ? compressRefusal(spec.protocol ?? base.format) : undefined
              if (uncompressible !== undefined) return yield* new ImageError({ reason: "Unsupported", message: uncompressible })
              if (!request.snapshot) return { raw: base, overlay: undefined }
              const overlay = path.join(os.tmpdir(), `qcow2-io-snapshot-${process.pid}-${Date.now()}.qcow2`)
              yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(overlay, { force: true })))
              if (base.format === "null-co") return yield* new ImageError({ reason: "Unsupported", message: "null-co cannot be the backing file of a snapshot overlay", errno: "ENOTSUP" })
              yield* createImage(overlay, { size: base.virtualSize, backingFile: path.resolve(spec.file), backingFormat: base.format })
              return { raw: yield* openImage(overlay, { readOnly: request.readOnly, ...(passphrase !== undefined ? { passphrase } : {}) }), overlay }
            })
          )
        )
        if (opened._tag === "Failure") {
          yield* Scope.close(scope, Exit.void)
          errorReport(prefix + opened.failure.message)
          return false
        }
        const { raw, overlay } = opened.success
        const debugged = spec.imageBlkdebug !== undefined ? withImageBlkdebug(raw, spec.imageBlkdebug) : undefined
        const filtered = debugged?.image ?? raw
        const limited = spec.blkdebugLimits !== undefined ? withBlkdebugLimits(filtered, spec.blkdebugLimits) : filtered
        const compress = spec.compressFilter === true
        const above = (image: Image): Image => {
          const compressed = compress ? compressFilter(image) : image
          return request.copyOnRead || spec.copyOnReadFilter === true ? copyOnRead(compressed, debugged?.debugEvent) : compressed
        }
        const image = above(isWritethrough(request.cache) && !raw.readOnly ? writethrough(limited) : limited)
        self.opened = { image, raw, scope, request, overlay, limited, above, compress, quorumTop: spec.quorumTop === true, breakpoints }
        return true
      })
    })
  }

  /**
   * Closes the image as QEMU's bdrv_close does: a flush (unless read-only
   * or cache=unsafe) whose failure is not reported, then the driver's own
   * write-back, which reports each cache it could not write ("Failed to
   * flush the L2 table cache: …"), then the files are released. False when
   * anything could not be written back (the run then exits 1). The aio
   * requests in flight are drained first (see AioRequests.close).
   */
  close(): Effect.Effect<boolean> {
    return Effect.suspend(() => {
      if (this.opened === undefined) return Effect.succeed(true)
      const requests = this.requests
      const self = this
      return Effect.gen(function* () {
        yield* requests.close()
        const opened = self.opened
        if (opened === undefined) return true
        self.opened = undefined
        return yield* closeImage(opened).pipe(Effect.tap(() => Scope.close(opened.scope, Exit.void)))
      })
    })
  }

  /**
   * `reopen`: the same image with another mode; options it cannot change
   * are refused before anything changes. On failure the image stays as it was.
   */
  reopen(change: ReopenRequest): Effect.Effect<boolean, never, ImageEnv> {
    const self = this
    return Effect.gen(function* () {
      if (self.opened === undefined) return false
      // QEMU drains the node before reopening it.
      yield* self.requests.drain()
      const opened = self.opened
      if (opened === undefined) return false
      let readOnly = change.readOnly
      for (const [key, value] of change.options) {
        if (BOOLEAN_OPTIONS.has(key) && value !== "on" && value !== "off") {
          errorReport(`Parameter '${key}' expects 'on' or 'off'`)
          return false
        }
      }
      for (const [key, value] of change.options) {
        if (key === "read-only") readOnly = value === "on"
        else if (BOOLEAN_OPTIONS.has(key) || REOPENABLE.has(key)) continue
        else if (value !== currentOption(opened, key)) {
          // The node the option belongs to reports it by its own name.
          errorReport(`Cannot change the option '${key.replace(/^(?:file|backing)\./, "")}'`)
          return false
        }
      }
      // lazy-refcounts changes how the driver writes: it takes a new open, as a mode change does.
      const lazy = change.options.get("lazy-refcounts")
      const lazyChanged = typeof lazy === "string" && lazy !== opened.request.options.get("lazy-refcounts")
      const request: OpenRequest = {
        ...opened.request,
        readOnly: readOnly ?? opened.request.readOnly,
        cache: change.cache ?? opened.request.cache,
        options: lazyChanged ? new Map([...opened.request.options, ["lazy-refcounts", lazy]]) : opened.request.options
      }
      if (opened.overlay !== undefined || (!lazyChanged && request.readOnly === opened.request.readOnly && request.cache === opened.request.cache)) {
        self.opened = { ...opened, request, image: opened.above(isWritethrough(request.cache) && !opened.raw.readOnly ? writethrough(opened.limited) : opened.limited) }
        return true
      }
      if (!(yield* self.close())) return false
      if (yield* self.open(request)) return true
      yield* self.open(opened.request)
      return false
    })
  }
}

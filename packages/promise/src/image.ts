/**
 * `open()` and the image handle of the Promise API: every method runs the
 * Effect API's operation on the platform's runtime. Requests may overlap
 * (the engine serialises metadata updates and lets data I/O run in parallel).
 */
import { Effect, Exit, Scope } from "effect"
import {
  imageInfo,
  mapImage,
  chainLayers,
  openImage,
  ImageError as EffectImageError,
  type BlockStatus,
  type CheckResult,
  type Image,
  type NodeDriver,
  type ImageInfo,
  type MapEntry
} from "@qcow2/image"
import { StorageOpener, type StorageOpenerShape } from "@qcow2/storage"
import { ImageClosedError } from "./errors.js"
import * as Arguments from "./internal/arguments.js"
import type { OpenOptions, ResizeOptions } from "./options.js"
import { passphraseBytes, publicErrors, type Runner } from "./runtime.js"

const invalidArgument = (location: string, message: string) => new EffectImageError({ reason: "InvalidArgument", message, location })

/** An open image. Close it with `close()` or `await using`. */
export interface QcowImage extends AsyncDisposable {
  /** The format the image was opened as. */
  readonly format: NodeDriver
  /** The name the image was opened by (path, URL, `idb://` name). */
  readonly location: string
  readonly readOnly: boolean
  /** Guest size in bytes (changes with `resize`). */
  readonly virtualSize: number
  /** Cluster size of a qcow2 image, 512 for raw. */
  readonly clusterSize: number
  /** Whether `close()` was called. */
  readonly closed: boolean
  /** Reads `length` bytes at guest `offset` into a new array. */
  read(offset: number, length: number): Promise<Uint8Array>
  /** Reads `buffer.length` bytes at guest `offset` into `buffer`, and returns it. */
  readInto<T extends Uint8Array>(offset: number, buffer: T): Promise<T>
  /** Writes `data` at guest `offset` (any alignment). */
  write(offset: number, data: Uint8Array): Promise<void>
  /** Writes zeros; with `unmap` the image may deallocate the range (qemu-io `write -z -u`). */
  writeZeroes(offset: number, length: number, options?: { readonly unmap?: boolean }): Promise<void>
  /** Discards the range: it reads as zeros (or from the backing file) afterwards. */
  discard(offset: number, length: number): Promise<void>
  /** Writes whole aligned clusters compressed (qemu-io `write -c`); the last cluster may end at the image end. */
  writeCompressed(offset: number, data: Uint8Array): Promise<void>
  /** Makes every acknowledged write durable. */
  flush(): Promise<void>
  /** Grows (or with `shrink`, shrinks) the guest size, as `qemu-img resize`. */
  resize(size: number, options?: ResizeOptions): Promise<void>
  /** Status of the extent starting at `offset`, at most `length` bytes (adjacent clusters of equal status merged). */
  blockStatus(offset: number, length: number): Promise<BlockStatus>
  /** The extents `qemu-img map --output=json` lists, for the whole image or [start, start + length). */
  map(options?: { readonly start?: number; readonly length?: number }): Promise<MapEntry[]>
  /** `qemu-img check` of a qcow2 image (its result fields); `repair` fixes leaks or everything, as `-r`. */
  check(options?: { readonly repair?: "leaks" | "all" }): Promise<CheckResult>
  /** The data of `qemu-img info --output=json` for this image. */
  info(): Promise<ImageInfo>
  /** With `backingChain`, one entry per image of the chain, top first (`qemu-img info --backing-chain`). */
  info(options: { readonly backingChain: true }): Promise<ImageInfo[]>
  /**
   * Waits for the requests in flight, flushes and closes the image and its
   * backing files. Closing twice is harmless; a flush failure rejects (the
   * files are closed all the same). Any later request rejects with ImageClosedError.
   */
  close(): Promise<void>
}

/** The QcowImage of an open Effect API image and the scope that owns its files. */
class OpenedImage implements QcowImage {
  readonly #image: Image
  readonly #scope: Scope.Closeable
  readonly #runner: Runner
  readonly #inFlight = new Set<Promise<unknown>>()
  #closing: Promise<void> | undefined

  constructor(image: Image, scope: Scope.Closeable, runner: Runner) {
    this.#image = image
    this.#scope = scope
    this.#runner = runner
  }

  get format(): NodeDriver {
    return this.#image.format
  }
  get location(): string {
    return this.#image.location
  }
  get readOnly(): boolean {
    return this.#image.readOnly
  }
  get virtualSize(): number {
    return this.#image.virtualSize
  }
  get clusterSize(): number {
    return this.#image.clusterSize
  }
  get closed(): boolean {
    return this.#closing !== undefined
  }

  /** Runs one request, unless the image is closed; `close()` waits for it. */
  #request<A>(effect: Effect.Effect<A, EffectImageError>): Promise<A> {
    if (this.#closing !== undefined) return Promise.reject(new ImageClosedError(this.location))
    const promise = this.#runner.run(publicErrors(effect))
    this.#inFlight.add(promise)
    const settled = () => void this.#inFlight.delete(promise)
    promise.then(settled, settled)
    return promise
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const image = this.#image
    return this.#request(
      Effect.suspend(() => {
        // Checked before allocating, so a wrong length cannot ask for unbounded memory.
        if (!Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset) || offset < 0 || offset + length > image.virtualSize) {
          return Effect.fail(invalidArgument(image.location, `read of ${length} bytes at ${offset} is outside the image (${image.virtualSize} bytes)`))
        }
        const into = new Uint8Array(length)
        return Effect.as(image.read(offset, into), into)
      })
    )
  }

  readInto<T extends Uint8Array>(offset: number, buffer: T): Promise<T> {
    return this.#request(Arguments.bytes(this.location, buffer).pipe(Effect.andThen(this.#image.read(offset, buffer)), Effect.as(buffer)))
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#request(Effect.andThen(Arguments.bytes(this.location, data), this.#image.write(offset, data)))
  }

  writeZeroes(offset: number, length: number, options?: { readonly unmap?: boolean }): Promise<void> {
    return this.#request(this.#image.writeZeroes(offset, length, options))
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#request(this.#image.discard(offset, length))
  }

  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    return this.#request(Effect.andThen(Arguments.bytes(this.location, data), this.#image.writeCompressed(offset, data)))
  }

  flush(): Promise<void> {
    return this.#request(this.#image.flush())
  }

  resize(size: number, options?: ResizeOptions): Promise<void> {
    return this.#request(this.#image.truncate(size, options))
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    return this.#request(this.#image.blockStatus(offset, length))
  }

  map(options?: { readonly start?: number; readonly length?: number }): Promise<MapEntry[]> {
    return this.#request(
      Effect.map(mapImage(this.#image, this.location, options?.start ?? 0, options?.length), (entries) =>
        entries.map(({ filename: _, ...entry }) => entry)
      )
    )
  }

  check(options?: { readonly repair?: "leaks" | "all" }): Promise<CheckResult> {
    return this.#request(Effect.andThen(Arguments.repairMode(this.location, options?.repair), this.#image.check(options)))
  }

  info(): Promise<ImageInfo>
  info(options: { readonly backingChain: true }): Promise<ImageInfo[]>
  info(options?: { readonly backingChain?: boolean }): Promise<ImageInfo | ImageInfo[]> {
    const layers = options?.backingChain === true ? chainLayers(this.#image, this.location) : [{ name: this.location, image: this.#image }]
    return this.#request(
      Effect.forEach(layers, (layer) =>
        Effect.flatMap(
          Effect.promise(() => this.#runner.platform.allocatedBytes(layer.image.location)),
          (actual) => imageInfo(layer.image, layer.name, actual)
        )
      ).pipe(Effect.map((infos) => (options?.backingChain === true ? infos : infos[0]!)))
    )
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inFlight])
      try {
        if (!this.#image.readOnly) await this.#runner.run(publicErrors(this.#image.flush()))
      } finally {
        await this.#runner.run(Scope.close(this.#scope, Exit.void))
      }
    })()
    return this.#closing
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close()
  }
}

/**
 * Opens an image by name on `runner`'s platform, probing qcow2, LUKS and
 * raw unless `options.format` says, with its backing chain. `opener`, when
 * given, opens the image and its backing files instead of the platform's
 * (a browser's opening policy, a picked file).
 */
export async function openWith(runner: Runner, name: string, options: OpenOptions = {}, opener?: StorageOpenerShape): Promise<QcowImage> {
  const scope = Scope.makeUnsafe()
  const opened = Effect.suspend(() => {
    const effect = Effect.andThen(Arguments.inputFormat(name, options.format), openImage(name, {
      readOnly: options.readOnly ?? runner.platform.readOnlyByDefault(name),
      ...(options.format !== undefined ? { format: options.format } : {}),
      ...(options.openBacking !== undefined ? { openBacking: options.openBacking } : {}),
      ...(options.passphrase !== undefined ? { passphrase: passphraseBytes(options.passphrase) } : {})
    }))
    const scoped = Scope.provide(scope)(effect)
    return publicErrors(opener !== undefined ? Effect.provideService(scoped, StorageOpener, opener) : scoped)
  })
  try {
    return new OpenedImage(await runner.run(opened), scope, runner)
  } catch (e) {
    await runner.run(Scope.close(scope, Exit.void))
    throw e
  }
}

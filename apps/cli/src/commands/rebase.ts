/**
 * `qcow2 rebase`: qemu-img rebase. Safe mode copies into the image every
 * range it does not allocate where the old and the new backing file
 * differ, so its content stays the same; then (and in unsafe mode, only)
 * the header gets the new backing name and format.
 */
import * as nodePath from "node:path"
import { Effect } from "effect"
import type { Image, ImageError } from "@qcow2/image"
import { isUrl } from "../names.js"
import { open, openNamed, type ImageEnv, type CliFormat } from "../env.js"
import { errnoText, fail, strerror, type CliFailure } from "../errors.js"
import { allocatedAbove, findInChain } from "./commit.js"
import { Progress } from "../progress.js"

export interface RebaseOptions {
  readonly file: string
  readonly format?: CliFormat
  /** -b: the new backing file name as it goes into the header ("" detaches). */
  readonly backing: string | undefined
  readonly backingFormat?: string
  readonly unsafe: boolean
  readonly progress: boolean
  readonly quiet: boolean
  readonly passphrase?: Uint8Array
}

/** Bytes compared per step (qemu-img's IO_BUF_SIZE). */
const IO_BUF = 2 * 1024 * 1024
const SECTOR = 512

/** Format names qemu-img 7.2 knows (bdrv_find_format); only qcow2 and raw can be opened here. */
const KNOWN_FORMATS = new Set(["qcow2", "raw", "qcow", "qed", "vmdk", "vdi", "vpc", "vhdx", "luks", "parallels", "bochs", "cloop", "dmg", "vvfat", "file", "host_device", "nbd", "blkdebug"])

/**
 * Length of the run at the start of `a`/`b` that is all-different or
 * all-equal, compared in 512-byte sectors (qemu-img's compare_buffers), and
 * whether it differs.
 */
export const sectorRun = (a: Uint8Array, b: Uint8Array, length: number): { readonly differ: boolean; readonly length: number } => {
  const sectorDiffers = (at: number): boolean => {
    const end = Math.min(length, at + SECTOR)
    return Buffer.compare(a.subarray(at, end), b.subarray(at, end)) !== 0
  }
  const differ = sectorDiffers(0)
  let i = Math.min(length, SECTOR)
  while (i < length && sectorDiffers(i) === differ) i = Math.min(length, i + SECTOR)
  return { differ, length: i }
}

/** Where qemu-img looks for a backing name given on the command line: relative to the image. */
const resolveBacking = (image: string, name: string): string =>
  isUrl(name) || nodePath.isAbsolute(name) || isUrl(image) ? name : nodePath.join(nodePath.dirname(image), name)

/** The message qemu-img prints when the header cannot take the new backing file. */
const changeFailure = (o: RebaseOptions, e: ImageError): CliFailure => {
  const name = o.backing ?? ""
  if (e.reason === "NoSpace") return fail(`Could not change the backing file to '${name}': No space left in the file header`)
  return fail(`Could not change the backing file to '${name}': ${strerror(e)}`)
}

/** Copies into `image` what changes for it when its backing file becomes `next` (prefix: `next` is the chain image at that depth). */
const copyDifferences = (
  image: Image,
  old: Image | undefined,
  next: Image | undefined,
  prefixDepth: number | undefined,
  progress: Progress | undefined
): Effect.Effect<void, CliFailure> =>
  Effect.gen(function* () {
    const size = image.virtualSize
    const oldSize = old?.virtualSize ?? 0
    const newSize = next?.virtualSize ?? 0
    const bufOld = new Uint8Array(IO_BUF)
    const bufNew = new Uint8Array(IO_BUF)
    const step = size === 0 ? 0 : 100 / Math.floor(size / Math.min(size, IO_BUF))
    const metadata = (e: ImageError) => fail(`error while reading image metadata: ${strerror(e)}`)
    let n = 0
    for (let offset = 0; offset < size; offset += n) {
      n = Math.min(IO_BUF, size - offset)
      const status = yield* image.blockStatus(offset, n).pipe(Effect.mapError(metadata))
      n = Math.max(1, Math.min(n, status.length))
      // Allocated in the image itself: the backing file is not seen here.
      if (status.present && status.depth === 0) continue
      // Rebasing onto an image of the chain: ranges no image above it allocates stay as they are.
      if (prefixDepth !== undefined && !allocatedAbove(status, prefixDepth)) continue
      let oldIsZero = false
      if (offset >= oldSize || old === undefined) {
        bufOld.fill(0, 0, n)
        oldIsZero = true
      } else {
        n = Math.min(n, oldSize - offset)
        yield* old.read(offset, bufOld.subarray(0, n)).pipe(Effect.mapError(() => fail("error while reading from old backing file")))
      }
      if (offset >= newSize || next === undefined) {
        bufNew.fill(0, 0, n)
      } else {
        n = Math.min(n, newSize - offset)
        yield* next.read(offset, bufNew.subarray(0, n)).pipe(Effect.mapError(() => fail("error while reading from new backing file")))
      }
      for (let written = 0; written < n; ) {
        const run = sectorRun(bufOld.subarray(written, n), bufNew.subarray(written, n), n - written)
        if (run.differ) {
          const at = offset + written
          const write = oldIsZero ? image.writeZeroes(at, run.length) : image.write(at, bufOld.subarray(written, written + run.length))
          yield* write.pipe(Effect.mapError((e) => fail(`Error while writing to COW image: ${strerror(e)}`)))
        }
        written += run.length
      }
      progress?.advance(step)
    }
  })

/** `qcow2 rebase`: as qemu-img rebase (exit 1 on any failure, nothing printed on success). */
export const runRebase = (o: RebaseOptions): Effect.Effect<number, CliFailure, ImageEnv> =>
  Effect.scoped(
    Effect.gen(function* () {
      const progress = o.progress && !o.quiet ? new Progress(100, 2) : undefined
      const image = yield* open(o.file, { readOnly: false, format: o.format, passphrase: o.passphrase, ...(o.unsafe ? { openBacking: false } : {}) })
      if (o.backingFormat !== undefined && !KNOWN_FORMATS.has(o.backingFormat)) {
        return yield* Effect.fail(fail(`Invalid format name: '${o.backingFormat}'`))
      }
      if (!o.unsafe) {
        const old = image.backing
        let next: Image | undefined
        let prefixDepth: number | undefined
        if (o.backing !== undefined && o.backing !== "") {
          const realPath = resolveBacking(o.file, o.backing)
          const inChain = findInChain(image, realPath)
          if (inChain !== undefined) {
            next = inChain.image
            prefixDepth = inChain.depth
          } else {
            const format = o.backingFormat === "qcow2" || o.backingFormat === "raw" ? o.backingFormat : undefined
            if (o.backingFormat !== undefined && format === undefined) {
              return yield* Effect.fail(fail(`Could not open new backing file '${o.backing}': Unknown driver '${o.backingFormat}'`))
            }
            next = yield* openNamed(realPath, { readOnly: true, format, passphrase: o.passphrase }).pipe(
              Effect.map(({ image }) => image),
              Effect.mapError(({ error }) => fail(`Could not open new backing file '${o.backing}': ${error.message}`))
            )
          }
        }
        yield* copyDifferences(image, old, next, prefixDepth, progress)
      }
      const name = o.backing !== undefined && o.backing !== "" ? o.backing : undefined
      if (name !== undefined && o.backingFormat === undefined) {
        return yield* Effect.fail(fail(`Could not change the backing file to '${name}': backing format must be specified`))
      }
      if (name === undefined && o.backingFormat !== undefined) {
        return yield* Effect.fail(fail(`Could not change the backing file to '${o.backing ?? ""}': ${errnoText("EINVAL")}`))
      }
      yield* image.setBacking(name, o.backingFormat).pipe(Effect.mapError((e) => changeFailure(o, e)))
      yield* image.flush().pipe(Effect.mapError((e) => fail(e.message)))
      progress?.finish()
      return 0
    })
  )

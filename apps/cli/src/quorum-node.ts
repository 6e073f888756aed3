/**
 * QEMU's quorum driver (block/quorum.c) as the file of an image
 * (`file.driver=quorum,file.vote-threshold=N,file.children.0.driver=file,…`):
 * the file's bytes are kept in every child. A read asks every child and
 * returns the version most children agree on, failing (EIO) when fewer than
 * vote-threshold agree (`read-pattern=fifo`: the first child that answers);
 * `rewrite-corrupted` writes the winning version over the children that
 * disagreed (QEMU 7.2 accepts it with fifo, where it does nothing). A write goes to every child and succeeds when at least
 * vote-threshold children took it. The children must have one size. A quorum
 * node has no directory, so a relative backing file name cannot be resolved
 * against it ("cannot determine actual path").
 */
import { Effect } from "effect"
import type { Image, ImageFormat } from "@qcow2/image"
import { StorageError, type BlockStorageShape, type LockRequest, type StorageExtent } from "@qcow2/storage"
import { QDict, toQemuJsonLine, type QValue } from "./text/qjson.js"

/** One child of the quorum: a file, or an image whose guest bytes are the child. */
export interface QuorumChild {
  readonly file: string
  readonly format?: ImageFormat
}

/** A quorum node's options. */
export interface QuorumNode {
  readonly children: ReadonlyArray<QuorumChild>
  readonly threshold: number
  readonly readPattern: "quorum" | "fifo"
  readonly rewriteCorrupted: boolean
}

/** QEMU's message when a backing file is named relative to a quorum node. */
export const QUORUM_NO_DIRECTORY = "Cannot generate a base directory for quorum nodes"

const BOOL_TRUE = new Set(["on", "yes", "true", "y"])
const BOOL_FALSE = new Set(["off", "no", "false", "n"])

type Parsed<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly message: string }

const boolOption = (own: ReadonlyMap<string, string>, key: string): Parsed<boolean> => {
  const value = own.get(key)
  if (value === undefined) return { ok: true, value: false }
  if (BOOL_TRUE.has(value) || BOOL_FALSE.has(value)) return { ok: true, value: BOOL_TRUE.has(value) }
  return { ok: false, message: `Parameter '${key}' expects 'on' or 'off'` }
}

/** A child's options (`children.N.…` without the prefix): a file node, or a format node over a file. */
const childOf = (own: ReadonlyMap<string, string>): Parsed<QuorumChild> => {
  const driver = own.get("driver")
  if (driver === undefined || driver === "file") {
    const file = own.get("filename")
    return file === undefined ? { ok: false, message: 'A block device must be specified for "filename"' } : { ok: true, value: { file } }
  }
  if (driver !== "qcow2" && driver !== "raw" && driver !== "luks") return { ok: false, message: `Unknown driver '${driver}'` }
  const fileDriver = own.get("file.driver")
  if (fileDriver !== undefined && fileDriver !== "file") return { ok: false, message: `Unknown protocol '${fileDriver}'` }
  const file = own.get("file.filename") ?? own.get("file")
  return file === undefined ? { ok: false, message: 'A block device must be specified for "file"' } : { ok: true, value: { file, format: driver } }
}

/**
 * The quorum node whose options start with `prefix` ("file."), taken out of
 * `options`; QEMU's messages (quorum_open) for what it refuses, in its order.
 */
export const takeQuorumNode = (options: Map<string, string | null>, prefix: string): Parsed<QuorumNode> => {
  const own = new Map<string, string>()
  for (const [key, value] of [...options]) {
    if (!key.startsWith(prefix)) continue
    options.delete(key)
    if (typeof value === "string") own.set(key.slice(prefix.length), value)
  }
  const childOptions: Array<Map<string, string>> = []
  for (let i = 0; [...own.keys()].some((key) => key === `children.${i}` || key.startsWith(`children.${i}.`)); i++) {
    const reference = own.get(`children.${i}`)
    if (reference !== undefined) return { ok: false, message: `Cannot find device='' nor node-name='${reference}'` }
    const mine = new Map<string, string>()
    for (const [key, value] of own) if (key.startsWith(`children.${i}.`)) mine.set(key.slice(`children.${i}.`.length), value)
    childOptions.push(mine)
  }
  if (childOptions.length < 1) return { ok: false, message: "Number of provided children must be 1 or more" }
  const thresholdText = own.get("vote-threshold")
  const threshold = thresholdText === undefined ? 0 : /^-?\d+$/.test(thresholdText) ? Number(thresholdText) : Number.NaN
  if (Number.isNaN(threshold)) return { ok: false, message: "Parameter 'vote-threshold' expects a number" }
  if (threshold < 1) return { ok: false, message: "Parameter 'vote-threshold' expects a value >= 1" }
  if (threshold > childOptions.length) return { ok: false, message: "threshold may not exceed children count" }
  const pattern = own.get("read-pattern") ?? "quorum"
  if (pattern !== "quorum" && pattern !== "fifo") return { ok: false, message: "Please set read-pattern as fifo or quorum" }
  const blkverify = boolOption(own, "blkverify")
  if (!blkverify.ok) return blkverify
  if (blkverify.value && (childOptions.length !== 2 || threshold !== 2)) {
    return { ok: false, message: "blkverify=on can only be set if there are exactly two files and vote-threshold is 2" }
  }
  const rewrite = boolOption(own, "rewrite-corrupted")
  if (!rewrite.ok) return rewrite
  const children: QuorumChild[] = []
  for (const mine of childOptions) {
    const child = childOf(mine)
    if (!child.ok) return child
    children.push(child.value)
  }
  for (const key of own.keys()) {
    if (key.startsWith("children.") || ["driver", "node-name", "vote-threshold", "read-pattern", "blkverify", "rewrite-corrupted"].includes(key)) continue
    return { ok: false, message: `Block format 'quorum' does not support the option '${key}'` }
  }
  return { ok: true, value: { children, threshold, readPattern: pattern, rewriteCorrupted: rewrite.value } }
}

/** A child's status at `offset` (QEMU asks each child's whole chain); a child that cannot tell, or fails, counts as data. */
const childExtent = (child: BlockStorageShape, offset: number, length: number): Effect.Effect<StorageExtent> => {
  const data: StorageExtent = { length, data: true, zero: false }
  if (child.blockStatus !== undefined) return Effect.orElseSucceed(child.blockStatus(offset, length), () => data)
  const seek = child.seekExtent
  if (seek === undefined) return Effect.succeed(data)
  // A file: a hole reads as zeros up to the next data, data runs up to the next hole.
  const extent = Effect.flatMap(seek(offset, "data"), (next) =>
    next > offset
      ? Effect.succeed({ length: Math.min(length, next - offset), data: false, zero: true })
      : Effect.map(seek(offset, "hole"), (hole) => ({ length: Math.max(1, Math.min(length, hole - offset)), data: true, zero: false }))
  )
  return Effect.orElseSucceed(extent, () => data)
}

/**
 * The quorum's status from its children's (QEMU's quorum_co_block_status):
 * zeros only where every child reads zeros (the shortest such extent),
 * else data (the longest data extent).
 */
const mergeExtents =
  (length: number) =>
  (extents: ReadonlyArray<StorageExtent>): StorageExtent => {
    let zeroLength = length
    let dataLength = 0
    for (const e of extents) {
      if (e.zero) zeroLength = Math.min(zeroLength, e.length)
      else dataLength = Math.max(dataLength, e.length)
    }
    return dataLength > 0 ? { length: dataLength, data: true, zero: false } : { length: zeroLength, data: false, zero: true }
  }

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** The store of a quorum node over its children's stores (see the module comment). */
export const quorumStorage = (location: string, node: QuorumNode, children: ReadonlyArray<BlockStorageShape>): BlockStorageShape => {
  const ioError = (message: string) => new StorageError({ reason: "Io", message: `${location}: ${message}`, location, errno: "EIO" })
  /** Runs `op` on every child; the successes, or the first failure when fewer than the threshold succeeded. */
  const onAll = <A>(op: (child: BlockStorageShape, index: number) => Effect.Effect<A, StorageError>) =>
    Effect.flatMap(
      Effect.forEach(children, (child, index) => Effect.result(op(child, index)), { concurrency: "unbounded" }),
      (results) => {
        const succeeded = results.flatMap((r, index) => (r._tag === "Success" ? [{ index, value: r.success }] : []))
        if (succeeded.length >= node.threshold) return Effect.succeed(succeeded)
        const failed = results.find((r) => r._tag === "Failure")
        return Effect.fail(failed?._tag === "Failure" ? failed.failure : ioError("quorum not reached"))
      }
    )
  const readFifo = (offset: number, into: Uint8Array, index: number): Effect.Effect<void, StorageError> =>
    Effect.catch(children[index]!.read(offset, into), (e) => (index + 1 < children.length ? readFifo(offset, into, index + 1) : Effect.fail(e)))
  const readVoting = (offset: number, into: Uint8Array): Effect.Effect<void, StorageError> =>
    Effect.gen(function* () {
      const answers = yield* onAll((child) => {
        const buffer = new Uint8Array(into.length)
        return Effect.as(child.read(offset, buffer), buffer)
      })
      // Versions in the order first seen; on a tie QEMU's vote list yields the version seen last.
      const versions: Array<{ bytes: Uint8Array; voters: number[] }> = []
      for (const { index, value } of answers) {
        const version = versions.find((v) => sameBytes(v.bytes, value))
        if (version !== undefined) version.voters.push(index)
        else versions.push({ bytes: value, voters: [index] })
      }
      let winner = versions[versions.length - 1]!
      for (let i = versions.length - 1; i >= 0; i--) if (versions[i]!.voters.length > winner.voters.length) winner = versions[i]!
      if (winner.voters.length < node.threshold) return yield* ioError(`no version of ${into.length} bytes at ${offset} has ${node.threshold} votes`)
      into.set(winner.bytes)
      if (!node.rewriteCorrupted) return
      for (const { index } of answers) if (!winner.voters.includes(index)) yield* Effect.ignore(children[index]!.write(offset, winner.bytes))
    })
  return {
    location,
    capabilities: { readOnly: children.some((c) => c.capabilities.readOnly), discard: false, alignment: 1 },
    read: (offset, into) => (node.readPattern === "fifo" ? readFifo(offset, into, 0) : readVoting(offset, into)),
    write: (offset, data) => Effect.asVoid(onAll((child) => child.write(offset, data))),
    flush: () => Effect.asVoid(onAll((child) => child.flush())),
    size: () =>
      Effect.flatMap(
        Effect.forEach(children, (child) => child.size()),
        (sizes) => (sizes.every((s) => s === sizes[0]) ? Effect.succeed(sizes[0]!) : Effect.fail(ioError("the children differ in size")))
      ),
    resize: () => Effect.fail(new StorageError({ reason: "Unsupported", message: "Image format driver does not support resize", location, errno: "ENOTSUP" })),
    blockStatus: (offset, length) => Effect.map(Effect.forEach(children, (child) => childExtent(child, offset, length)), mergeExtents(length)),
    discard: () => Effect.void,
    lock: (request: LockRequest) => Effect.forEach(children, (child) => (child.lock !== undefined ? child.lock(request) : Effect.void), { discard: true })
  }
}

/** The quorum options QEMU keeps in a quorum node's name (its strong runtime options), as given. */
const NAMED_OPTIONS = ["vote-threshold", "read-pattern", "blkverify", "rewrite-corrupted"]

/**
 * The name QEMU gives a quorum node opened at the root (driver=quorum,
 * children.N.…): `json:{…}` of its driver, its children (each a file node,
 * or a format node over one) and its own options, in QEMU's JSON.
 */
export const quorumNameOf = (options: ReadonlyMap<string, string | null>): string => {
  const children: QValue[] = []
  for (let i = 0; [...options.keys()].some((key) => key.startsWith(`children.${i}.`)); i++) {
    const own = (key: string) => options.get(`children.${i}.${key}`) ?? undefined
    const driver = own("driver") ?? "file"
    const fileNode = (filename: string | undefined) => QDict.of([["driver", "file"], ["filename", filename]])
    children.push(driver === "file" ? fileNode(own("filename")) : QDict.of([["driver", driver], ["file", fileNode(own("file.filename") ?? own("file"))]]))
  }
  const name = QDict.of([["children", children], ["driver", "quorum"]])
  for (const key of NAMED_OPTIONS) name.set(key, options.get(key) ?? undefined)
  return `json:${toQemuJsonLine(name)}`
}

/**
 * An image over a quorum store seen as the quorum node itself at the root:
 * its block status is the quorum's (every range allocated, data or zeros),
 * with no offset in any file.
 */
export const quorumTopImage = (image: Image): Image => {
  const top: Image = Object.create(image)
  return Object.assign(top, {
    blockStatus: (offset: number, length: number) =>
      Effect.map(image.blockStatus(offset, length), (s) => ({ offset: s.offset, length: s.length, depth: 0, present: true, zero: s.zero, data: s.data, compressed: false }))
  })
}

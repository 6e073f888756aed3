import { execFileSync } from "node:child_process"
import * as fsSync from "node:fs"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as nodePath from "node:path"
import { Effect, Fiber, Layer } from "effect"
import type { Scope } from "effect"
import { BlockStorage, StorageOpener, writeNowOf } from "@qcow2/storage"
import type { OpenOptions, StorageError } from "@qcow2/storage"
import { blockStorageConformance } from "@qcow2/storage/testing"
import { describe, expect, it } from "vitest"
import { fromSystemError, NodeFileStorage, NodeStorageOpener, openNodeFile, resolveNodePath } from "../src/index.js"

/** A fresh temporary directory, removed when the scope closes. */
const tempDir: Effect.Effect<string, never, Scope.Scope> = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(nodePath.join(os.tmpdir(), "qcow2-storage-node-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)

const withFile = (content: Uint8Array | undefined, options: OpenOptions) =>
  Effect.flatMap(tempDir, (dir) => {
    const path = nodePath.join(dir, "image.raw")
    return Effect.andThen(
      Effect.promise(() => (content === undefined ? Promise.resolve() : fs.writeFile(path, content))),
      openNodeFile(path, options)
    )
  })

blockStorageConformance("node file", () => withFile(undefined, { readOnly: false, create: true }), {
  makeWithContent: (content) => withFile(content, { readOnly: false })
})

blockStorageConformance("node file, read-only", () => withFile(new Uint8Array(10), { readOnly: true }), {
  readOnly: true,
  makeWithContent: (content) => withFile(content, { readOnly: true })
})

const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => Effect.runPromise(Effect.scoped(effect))

const failure = <A>(effect: Effect.Effect<A, StorageError, Scope.Scope>) => run(Effect.flip(effect))

describe("openNodeFile errors", () => {
  it("maps a missing file to NotFound with the path", async () => {
    const error = await failure(Effect.flatMap(tempDir, (dir) =>
      openNodeFile(nodePath.join(dir, "missing.qcow2"), { readOnly: true })))
    expect(error.reason).toBe("NotFound")
    expect(error.location).toMatch(/missing\.qcow2$/)
    expect(error.message).toContain("missing.qcow2")
    expect(error.message).toContain("no such file or directory (ENOENT)")
  })

  it("refuses an empty name as QEMU does", async () => {
    const error = await failure(openNodeFile("", { readOnly: true }))
    expect(error.reason).toBe("Unsupported")
    expect(error.message).toBe("The 'file' block driver requires a file name")
  })

  it("maps a path through a regular file to NotFound", async () => {
    const error = await failure(Effect.flatMap(withFile(new Uint8Array(1), { readOnly: true }), (s) =>
      openNodeFile(nodePath.join(s.location, "child"), { readOnly: true })))
    expect(error.reason).toBe("NotFound")
  })

  it("rejects a directory: read-only with Unsupported and QEMU's message, read-write as open(2) does (EISDIR)", async () => {
    const ro = await failure(Effect.flatMap(tempDir, (dir) => openNodeFile(dir, { readOnly: true })))
    expect(ro.reason).toBe("Unsupported")
    expect(ro.message).toMatch(/^'file' driver requires '.*' to be a regular file$/)
    const rw = await failure(Effect.flatMap(tempDir, (dir) => openNodeFile(dir, { readOnly: false })))
    expect(rw.reason).toBe("Io")
    expect(rw.errno).toBe("EISDIR")
    expect(rw.message).toContain("is a directory")
  })

  it.skipIf(process.platform === "win32")("refuses a FIFO without a writer at once, read-only or not, instead of blocking", async () => {
    for (const readOnly of [true, false]) {
      const error = await failure(Effect.gen(function*() {
        const dir = yield* tempDir
        const fifo = nodePath.join(dir, "fifo")
        execFileSync("mkfifo", [fifo])
        return yield* openNodeFile(fifo, { readOnly })
      }).pipe(Effect.timeout(5000)) as Effect.Effect<unknown, StorageError, Scope.Scope>)
      expect(error.reason).toBe("Unsupported")
      expect(error.message).toBe(`'file' driver requires '${error.location}' to be a regular file`)
    }
  })

  it.skipIf(process.platform === "win32")("refuses a FIFO that has a writer (a qcow2 fed through it is not an image)", async () => {
    const error = await failure(Effect.gen(function*() {
      const dir = yield* tempDir
      const fifo = nodePath.join(dir, "fifo")
      execFileSync("mkfifo", [fifo])
      // O_RDWR keeps a writer on the FIFO without waiting for a reader.
      const writer = yield* Effect.acquireRelease(
        Effect.sync(() => fsSync.openSync(fifo, fsSync.constants.O_RDWR)),
        (fd) => Effect.sync(() => fsSync.closeSync(fd))
      )
      fsSync.writeSync(writer, new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]))
      return yield* openNodeFile(fifo, { readOnly: true })
    }))
    expect(error.reason).toBe("Unsupported")
  })

  it.skipIf(!fsSync.existsSync("/dev/null"))("accepts a character device, as QEMU's host_device driver does (/dev/null: empty)", async () => {
    const size = await run(Effect.flatMap(openNodeFile("/dev/null", { readOnly: true }), (s) => s.size()))
    expect(size).toBe(0)
  })

  it.skipIf(process.platform === "win32")("maps a socket (open fails with ENXIO) to Io with the errno", async () => {
    const error = await failure(Effect.gen(function*() {
      const dir = yield* tempDir
      const path = nodePath.join(dir, "sock")
      const server = net.createServer()
      yield* Effect.acquireRelease(
        Effect.callback<void>((resume) => void server.listen(path, () => resume(Effect.void))),
        () => Effect.callback<void>((resume) => void server.close(() => resume(Effect.void)))
      )
      return yield* openNodeFile(path, { readOnly: true })
    }))
    expect(error.reason).toBe("Io")
    expect(error.errno).toBe("ENXIO")
    expect(error.message).toContain("no such device or address (ENXIO)")
  })

  it("rejects writes, resize and discard on a read-only open with ReadOnly and leaves the file alone", async () => {
    const content = new Uint8Array([1, 2, 3, 4])
    await run(Effect.gen(function*() {
      const storage = yield* withFile(content, { readOnly: true })
      expect((yield* Effect.flip(storage.write(0, new Uint8Array(2)))).reason).toBe("ReadOnly")
      expect((yield* Effect.flip(storage.resize(0))).reason).toBe("ReadOnly")
      expect((yield* Effect.flip(storage.discard(0, 4))).reason).toBe("ReadOnly")
      expect(new Uint8Array(yield* Effect.promise(() => fs.readFile(storage.location)))).toEqual(content)
    }))
  })

  it("refuses a read-only truncate", async () => {
    const error = await failure(withFile(new Uint8Array(4), { readOnly: true, truncate: true }))
    expect(error.reason).toBe("ReadOnly")
  })

  it.skipIf(process.getuid?.() === 0)("maps a file without write permission to PermissionDenied", async () => {
    const error = await failure(Effect.gen(function*() {
      const dir = yield* tempDir
      const path = nodePath.join(dir, "locked")
      yield* Effect.promise(() => fs.writeFile(path, new Uint8Array(4), { mode: 0o444 }))
      return yield* openNodeFile(path, { readOnly: false })
    }))
    expect(error.reason).toBe("PermissionDenied")
  })

  it("maps errno codes to reasons", () => {
    const errno = (code: string) => Object.assign(new Error(`${code}: boom`), { code })
    expect(fromSystemError(errno("ENOENT"), "open", "/a").reason).toBe("NotFound")
    expect(fromSystemError(errno("EACCES"), "open", "/a").reason).toBe("PermissionDenied")
    expect(fromSystemError(errno("EPERM"), "open", "/a").reason).toBe("PermissionDenied")
    expect(fromSystemError(errno("EROFS"), "write", "/a").reason).toBe("ReadOnly")
    const io = fromSystemError(errno("ENOSPC"), "write", "/a", 4096, 512)
    expect(io.reason).toBe("Io")
    expect(io.message).toBe("write /a of 512 bytes at 4096: no space left on device (ENOSPC)")
    expect(io.errno).toBe("ENOSPC")
    for (const code of ["EDQUOT", "EFBIG", "EIO"]) expect(fromSystemError(errno(code), "write", "/a").errno).toBe(code)
    expect(io.offset).toBe(4096)
    expect(io.length).toBe(512)
    expect(io.location).toBe("/a")
    expect(fromSystemError(errno("EWEIRD"), "read", "/a").message).toContain("EWEIRD: boom")
    expect(fromSystemError("not an error", "read", "/a").reason).toBe("Io")
    expect(fromSystemError("not an error", "read", "/a").errno).toBeUndefined()
  })
})

describe("openNodeFile", () => {
  it("creates, keeps or truncates as asked", async () => {
    await run(Effect.gen(function*() {
      const dir = yield* tempDir
      const path = nodePath.join(dir, "f")
      const sizeAfter = (options: OpenOptions, write?: Uint8Array) =>
        Effect.scoped(Effect.gen(function*() {
          const storage = yield* openNodeFile(path, options)
          if (write !== undefined) yield* storage.write(0, write)
          return yield* storage.size()
        }))
      expect((yield* Effect.flip(sizeAfter({ readOnly: false }))).reason).toBe("NotFound")
      expect(yield* sizeAfter({ readOnly: false, create: true }, new Uint8Array(100))).toBe(100)
      expect(yield* sizeAfter({ readOnly: false, create: true })).toBe(100)
      expect(yield* sizeAfter({ readOnly: true })).toBe(100)
      expect(yield* sizeAfter({ readOnly: false, create: true, truncate: true })).toBe(0)
    }))
  })

  it("fails with Closed after its scope ends", async () => {
    const storage = await run(withFile(new Uint8Array(8), { readOnly: false }))
    for (const effect of [storage.read(0, new Uint8Array(1)), storage.write(0, new Uint8Array(1)), storage.flush(), storage.size(), storage.resize(0), storage.discard(0, 1)]) {
      const error = await Effect.runPromise(Effect.flip(effect))
      expect(error.reason).toBe("Closed")
    }
  })

  it("an interrupted request interrupts only once it has finished (no write left running behind later ones)", async () => {
    const data = new Uint8Array(128 * 1024 * 1024).fill(5)
    await run(Effect.gen(function*() {
      const storage = yield* withFile(undefined, { readOnly: false, create: true })
      const fiber = yield* Effect.forkChild(storage.write(0, data))
      yield* Effect.sleep(1)
      yield* Fiber.interrupt(fiber)
      // The write is complete when the interruption is: nothing lands later.
      expect(fsSync.statSync(storage.location).size).toBe(data.length)
      const fd = fsSync.openSync(storage.location, "r")
      const tail = new Uint8Array(4096)
      fsSync.readSync(fd, tail, 0, tail.length, data.length - tail.length)
      fsSync.closeSync(fd)
      expect(tail.every((b) => b === 5)).toBe(true)
    }))
  })

  it("concurrent writes land whatever thread takes them: whole pages (the loop's), partial pages and big writes (the pool's)", async () => {
    const size = 1024 * 1024
    const model = new Uint8Array(size)
    // Disjoint ranges: 4 KiB pages, a run of pages, partial pages, one write past 128 KiB.
    const ranges: ReadonlyArray<readonly [number, number]> = [
      [0, 4096], [8192, 12288], [65536, 65536 + 40960], [20000, 1000], [24576 + 100, 3000],
      [200 * 1024, 200 * 1024], [4096 * 200, 4096], [size - 4096, 4096], [4096 * 100 + 512, 4096]
    ]
    const image = await run(Effect.gen(function*() {
      const storage = yield* withFile(new Uint8Array(size), { readOnly: false })
      yield* Effect.all(ranges.map(([offset, length], i) => {
        const data = new Uint8Array(length).fill(i + 1)
        model.set(data, offset)
        return storage.write(offset, data)
      }), { concurrency: "unbounded", discard: true })
      const back = new Uint8Array(size)
      yield* storage.read(0, back)
      expect(Buffer.compare(back, model)).toBe(0)
      yield* storage.flush()
      return fsSync.readFileSync(storage.location)
    }))
    expect(Buffer.compare(image, model)).toBe(0)
  })

  it("writeNow writes whole pages at once and leaves the rest to write; none on a read-only or closed file", async () => {
    const storage = await run(Effect.gen(function*() {
      const storage = yield* withFile(new Uint8Array(16384), { readOnly: false })
      const now = writeNowOf(storage)!
      expect(now(4096, new Uint8Array(4096).fill(7))).toBe(true)
      // Not whole pages, or past WRITE_NOW_MAX: nothing written, write's job.
      expect(now(100, new Uint8Array(10).fill(8))).toBe(false)
      expect(now(0, new Uint8Array(256 * 1024))).toBe(false)
      expect(now(-1, new Uint8Array(4096))).toBe(false)
      const back = new Uint8Array(16384)
      yield* storage.read(0, back)
      expect(back.subarray(4096, 8192).every((b) => b === 7)).toBe(true)
      expect(back.subarray(0, 4096).every((b) => b === 0)).toBe(true)
      expect(fsSync.statSync(storage.location).size).toBe(16384)
      expect(writeNowOf(yield* withFile(new Uint8Array(8), { readOnly: true }))).toBeUndefined()
      return storage
    }))
    // Closed: nothing written, and write gives the error.
    expect(writeNowOf(storage)!(0, new Uint8Array(4096))).toBe(false)
  })

  it("closes only after in-flight requests finish", async () => {
    const big = new Uint8Array(32 * 1024 * 1024)
    const data = await run(Effect.gen(function*() {
      const dir = yield* tempDir
      const path = nodePath.join(dir, "big")
      yield* Effect.promise(() => fs.writeFile(path, big.fill(7)))
      // Reading past EOF takes a second pread after the first returns, so a
      // close that did not wait would make that one fail (EBADF).
      const into = new Uint8Array(2 * big.length).fill(1)
      const pending = yield* Effect.scoped(Effect.gen(function*() {
        const storage = yield* openNodeFile(path, { readOnly: true })
        return Effect.runPromise(storage.read(0, into))
      }))
      yield* Effect.promise(() => pending)
      return into
    }))
    expect(data.subarray(0, big.length).every((b) => b === 7)).toBe(true)
    expect(data.subarray(big.length).every((b) => b === 0)).toBe(true)
  })
})

describe("resolveNodePath without a working directory name", () => {
  it("joins relative names as they are when the working directory has no name (deeper than PATH_MAX)", () => {
    const cwd = process.cwd
    process.cwd = () => {
      throw Object.assign(new Error("ERANGE: result too large, uv_cwd"), { code: "ERANGE" })
    }
    try {
      expect(resolveNodePath("overlay.qcow2", "base.qcow2")).toBe("base.qcow2")
      expect(resolveNodePath("sub/overlay.qcow2", "../base.qcow2")).toBe("base.qcow2")
      expect(resolveNodePath("sub/overlay.qcow2", "base.qcow2")).toBe("sub/base.qcow2")
      expect(resolveNodePath("/vm/overlay.qcow2", "base.qcow2")).toBe("/vm/base.qcow2")
    } finally {
      process.cwd = cwd
    }
  })
})

describe("layers", () => {
  it("NodeFileStorage.layer opens the file for the program and closes it after", async () => {
    await run(Effect.gen(function*() {
      const dir = yield* tempDir
      const path = nodePath.join(dir, "layered")
      const program = Effect.gen(function*() {
        const storage = yield* BlockStorage
        yield* storage.write(3, new Uint8Array([9]))
        yield* storage.flush()
        return yield* storage.size()
      })
      expect(yield* Effect.provide(program, NodeFileStorage.layer(path, { readOnly: false, create: true }))).toBe(4)
      expect(new Uint8Array(yield* Effect.promise(() => fs.readFile(path)))).toEqual(new Uint8Array([0, 0, 0, 9]))
      const missing = NodeFileStorage.layer(nodePath.join(dir, "nope"), { readOnly: true })
      expect((yield* Effect.flip(Effect.provide(program, missing))).reason).toBe("NotFound")
    }))
  })

  it("NodeStorageOpener resolves backing names against the overlay's directory", async () => {
    expect(resolveNodePath("/vm/disks/overlay.qcow2", "base.qcow2")).toBe("/vm/disks/base.qcow2")
    expect(resolveNodePath("/vm/disks/overlay.qcow2", "../base.qcow2")).toBe("/vm/base.qcow2")
    expect(resolveNodePath("/vm/disks/overlay.qcow2", "/srv/base.qcow2")).toBe("/srv/base.qcow2")
    expect(resolveNodePath("overlay.qcow2", "base.qcow2")).toBe(nodePath.resolve("base.qcow2"))
    expect(resolveNodePath("/vm/overlay.qcow2", "./x/../base.qcow2")).toBe("/vm/base.qcow2")
    await run(Effect.gen(function*() {
      const dir = yield* tempDir
      yield* Effect.promise(() => fs.mkdir(nodePath.join(dir, "sub")))
      yield* Effect.promise(() => fs.writeFile(nodePath.join(dir, "base.raw"), new Uint8Array(5)))
      const size = yield* Effect.provide(
        Effect.gen(function*() {
          const opener = yield* StorageOpener
          const name = opener.resolve(nodePath.join(dir, "sub", "overlay.qcow2"), "../base.raw")
          const storage = yield* opener.open(name, { readOnly: true })
          return yield* storage.size()
        }),
        NodeStorageOpener.layer
      )
      expect(size).toBe(5)
    }))
    expect(Layer.isLayer(NodeStorageOpener.layer)).toBe(true)
  })
})

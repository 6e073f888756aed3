import { Effect, Exit, Layer } from "effect"
import { describe, expect, it } from "vitest"
import type { BlockStorageShape } from "../src/index.js"
import {
  BlockStorage,
  makeMemoryStorage,
  makeMemoryStorageOpener,
  MemoryStorage,
  MemoryStorageOpener,
  normalizeName,
  resolveName,
  StorageOpener
} from "../src/index.js"
import { blockStorageConformance } from "../src/testing/index.js"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

blockStorageConformance("memory opener, created store", () =>
  makeMemoryStorageOpener().open("dir/image.qcow2", { readOnly: false, create: true }))

blockStorageConformance("memory opener, read-only view", () =>
  makeMemoryStorageOpener().open("x", { readOnly: true, create: true }), {
  readOnly: true,
  makeWithContent: (content) =>
    makeMemoryStorageOpener(new Map([["base.img", makeMemoryStorage({ initial: content })]]))
      .open("base.img", { readOnly: true })
})

describe("names", () => {
  it("normalises POSIX-like names", () => {
    expect(normalizeName("a//b/./c")).toBe("a/b/c")
    expect(normalizeName("a/../../b")).toBe("../b")
    expect(normalizeName("/../a/b/..")).toBe("/a")
    expect(normalizeName("./")).toBe(".")
    expect(normalizeName("/")).toBe("/")
  })

  it("resolves against the referencing name's directory", () => {
    expect(resolveName("images/overlay.qcow2", "base.qcow2")).toBe("images/base.qcow2")
    expect(resolveName("images/overlay.qcow2", "../base.qcow2")).toBe("base.qcow2")
    expect(resolveName("overlay.qcow2", "sub/base.qcow2")).toBe("sub/base.qcow2")
    expect(resolveName("/vm/a/overlay.qcow2", "base.qcow2")).toBe("/vm/a/base.qcow2")
    expect(resolveName("/vm/a/overlay.qcow2", "/other/base.qcow2")).toBe("/other/base.qcow2")
  })
})

describe("makeMemoryStorageOpener", () => {
  it("fails with NotFound for a missing store unless asked to create it", async () => {
    const files = new Map<string, BlockStorageShape>()
    const opener = makeMemoryStorageOpener(files)
    const error = await run(Effect.flip(Effect.scoped(opener.open("missing", { readOnly: true }))))
    expect(error.reason).toBe("NotFound")
    await run(Effect.scoped(Effect.flatMap(
      opener.open("./new//img", { readOnly: false, create: true }),
      (s) => s.write(0, new Uint8Array([1, 2, 3]))
    )))
    expect([...files.keys()]).toEqual(["new/img"])
    const size = await run(Effect.scoped(Effect.flatMap(opener.open("new/img", { readOnly: true }), (s) => s.size())))
    expect(size).toBe(3)
  })

  it("truncates on request, and refuses to truncate read-only", async () => {
    const files = new Map([["a", makeMemoryStorage({ initial: new Uint8Array(100).fill(1) })]])
    const opener = makeMemoryStorageOpener(files)
    const error = await run(Effect.flip(Effect.scoped(opener.open("a", { readOnly: true, truncate: true }))))
    expect(error.reason).toBe("ReadOnly")
    const size = await run(Effect.scoped(Effect.flatMap(
      opener.open("a", { readOnly: false, create: true, truncate: true }),
      (s) => s.size()
    )))
    expect(size).toBe(0)
  })

  it("fails with Closed after the scope ends, while the store lives on", async () => {
    const files = new Map<string, BlockStorageShape>()
    const opener = makeMemoryStorageOpener(files)
    const handle = await run(Effect.scoped(Effect.tap(
      opener.open("f", { readOnly: false, create: true }),
      (s) => s.write(0, new Uint8Array([9]))
    )))
    const exit = await Effect.runPromiseExit(handle.size())
    expect(Exit.isFailure(exit)).toBe(true)
    const error = await run(Effect.flip(handle.read(0, new Uint8Array(1))))
    expect(error.reason).toBe("Closed")
    expect(await run(files.get("f")!.size())).toBe(1)
  })
})

describe("layers", () => {
  it("MemoryStorage.layer builds a fresh store each time", async () => {
    const layer = MemoryStorage.layer({ name: "ram" })
    const program = Effect.gen(function*() {
      const storage = yield* BlockStorage
      const before = yield* storage.size()
      yield* storage.write(0, new Uint8Array(10))
      return [storage.location, before] as const
    })
    expect(await run(Effect.provide(program, layer))).toEqual(["ram", 0])
    expect(await run(Effect.provide(program, layer))).toEqual(["ram", 0])
  })

  it("MemoryStorageOpener.layer serves a shared filesystem", async () => {
    const files = new Map([["/vm/base.img", makeMemoryStorage({ initial: new Uint8Array(7) })]])
    const program = Effect.gen(function*() {
      const opener = yield* StorageOpener
      const name = opener.resolve("/vm/overlay.qcow2", "base.img")
      const storage = yield* opener.open(name, { readOnly: true })
      return yield* storage.size()
    })
    expect(await run(Effect.scoped(Effect.provide(program, MemoryStorageOpener.layer(files))))).toBe(7)
    expect(Layer.isLayer(MemoryStorageOpener.layer())).toBe(true)
  })
})

describe("sparse memory", () => {
  it("keeps an 8 TiB store with a few writes cheap", async () => {
    const storage = makeMemoryStorage()
    const tib8 = 8 * 2 ** 40
    await run(Effect.gen(function*() {
      yield* storage.resize(tib8)
      yield* storage.write(tib8 - 512, new Uint8Array(512).fill(5))
      yield* storage.write(2 ** 40 + 3, new Uint8Array(3).fill(6))
      const tail = new Uint8Array(1024)
      yield* storage.read(tib8 - 1024, tail)
      expect(tail.subarray(0, 512).every((b) => b === 0)).toBe(true)
      expect(tail.subarray(512).every((b) => b === 5)).toBe(true)
      expect(yield* storage.size()).toBe(tib8)
      yield* storage.resize(2 ** 40 + 4)
      const cut = new Uint8Array(4)
      yield* storage.read(2 ** 40 + 2, cut)
      expect([...cut]).toEqual([0, 6, 0, 0])
    }))
  })
})

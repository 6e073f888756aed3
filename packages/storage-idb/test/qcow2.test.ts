import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Layer } from "effect"
import type { Scope } from "effect"
import { IDBFactory, IDBKeyRange } from "fake-indexeddb"
import { afterAll, describe, expect, it } from "vitest"
import { NodeClusterCodec } from "@qcow2/compress/node"
import type { ClusterCodec } from "@qcow2/compress"
import { StorageOpener } from "@qcow2/storage"
import { createImage, openImage } from "@qcow2/image"
import { makeIdbStorageOpener } from "../src/index.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-idb-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe("qcow2 images kept in IndexedDB", () => {
  it("an image created and written in IndexedDB, with an overlay on it, passes qemu-img check and reads as qemu-img reads it", async () => {
    const environment = { indexedDB: new IDBFactory(), IDBKeyRange }
    const opener = makeIdbStorageOpener({ environment, chunkSize: 65536 })
    const layer = Layer.mergeAll(Layer.succeed(StorageOpener, opener), NodeClusterCodec.layer)
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | StorageOpener | ClusterCodec>) =>
      Effect.runPromise(Effect.scoped(effect).pipe(Effect.provide(layer)) as Effect.Effect<A, E>)
    const bytes = (name: string) =>
      run(
        Effect.gen(function* () {
          const s = yield* opener.open(name, { readOnly: true })
          const out = new Uint8Array(yield* s.size())
          yield* s.read(0, out)
          return out
        })
      )
    await run(
      Effect.gen(function* () {
        yield* createImage("idb://vm/disks/base.qcow2", { size: 4 << 20 })
        const base = yield* openImage("idb://vm/disks/base.qcow2")
        yield* base.write(0, new Uint8Array(200_000).fill(0x11))
        yield* base.write(3 << 20, new Uint8Array(4096).fill(0x22))
      })
    )
    await run(createImage("idb://vm/disks/top.qcow2", { backingFile: "base.qcow2", backingFormat: "qcow2" }))
    const seen = await run(
      Effect.gen(function* () {
        const top = yield* openImage("idb://vm/disks/top.qcow2")
        expect(top.backingFileResolved).toBe("idb://vm/disks/base.qcow2")
        yield* top.write(100_000, new Uint8Array(1000).fill(0x33))
        yield* top.flush()
        const out = new Uint8Array(top.virtualSize)
        yield* top.read(0, out)
        return out
      })
    )
    fs.writeFileSync(path.join(dir, "base.qcow2"), await bytes("idb://vm/disks/base.qcow2"))
    fs.writeFileSync(path.join(dir, "top.qcow2"), await bytes("idb://vm/disks/top.qcow2"))
    for (const f of ["base.qcow2", "top.qcow2"]) {
      const check = JSON.parse(execFileSync("qemu-img", ["check", "--output=json", f], { cwd: dir, encoding: "utf8" }))
      expect(check.corruptions ?? 0).toBe(0)
      expect(check.leaks ?? 0).toBe(0)
    }
    execFileSync("qemu-img", ["convert", "-O", "raw", "top.qcow2", "top.raw"], { cwd: dir })
    expect(Buffer.compare(fs.readFileSync(path.join(dir, "top.raw")), Buffer.from(seen))).toBe(0)
    expect(seen[100_500]).toBe(0x33)
    expect(seen[3 << 20]).toBe(0x22)
  })
})

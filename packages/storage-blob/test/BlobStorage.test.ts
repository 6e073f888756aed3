import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, Layer } from "effect"
import type { Scope } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { NodeClusterCodec } from "@qcow2/compress/node"
import type { ClusterCodec } from "@qcow2/compress"
import { StorageOpener } from "@qcow2/storage"
import { blockStorageConformance } from "@qcow2/storage/testing"
import { openImage } from "@qcow2/image"
import { makeBlobStorage, makeBlobStorageOpener } from "../src/index.js"

blockStorageConformance("Blob", () => Effect.succeed(makeBlobStorage(new Blob([new Uint8Array(10)]))), {
  readOnly: true,
  makeWithContent: (content) => Effect.succeed(makeBlobStorage(new Blob([content.slice()])))
})

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qcow2-blob-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const qemu = (tool: string, ...args: string[]) => execFileSync(tool, args, { cwd: dir, encoding: "utf8" })

describe("qcow2 images opened from Blobs (files a user picked)", () => {
  it("an overlay and its backing file read as qemu-img convert reads them; other names are not opened", async () => {
    qemu("qemu-img", "create", "-f", "qcow2", "base.qcow2", "8M")
    qemu("qemu-io", "-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 5M 64k", "base.qcow2")
    qemu("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    qemu("qemu-io", "-c", "write -P 0x43 512k 4k", "-c", "write -z 5M 4k", "top.qcow2")
    qemu("qemu-img", "convert", "-O", "raw", "top.qcow2", "top.raw")
    const files = new Map(["base.qcow2", "top.qcow2"].map((n) => [n, new Blob([fs.readFileSync(path.join(dir, n))])]))
    const layer = Layer.mergeAll(Layer.succeed(StorageOpener, makeBlobStorageOpener(files)), NodeClusterCodec.layer)
    const run = <A, E>(effect: Effect.Effect<A, E, Scope.Scope | StorageOpener | ClusterCodec>) =>
      Effect.runPromise(Effect.scoped(effect).pipe(Effect.provide(layer)) as Effect.Effect<A, E>)
    const got = await run(
      Effect.gen(function* () {
        const top = yield* openImage("top.qcow2", { readOnly: true })
        const out = new Uint8Array(top.virtualSize)
        // Unaligned pieces, through the cache and past it.
        for (let at = 0; at < out.length; ) {
          const n = Math.min(out.length - at, at % 3 === 0 ? 3 * 1024 * 1024 + 7 : 100_003)
          yield* top.read(at, out.subarray(at, at + n))
          at += n
        }
        return out
      })
    )
    expect(Buffer.compare(Buffer.from(got), fs.readFileSync(path.join(dir, "top.raw")))).toBe(0)
    const writable = await run(Effect.exit(openImage("top.qcow2")))
    expect(Exit.isFailure(writable)).toBe(true)
    const stranger = await run(Effect.exit(openImage("other.qcow2", { readOnly: true })))
    expect(Exit.isFailure(stranger) && JSON.stringify(stranger.cause)).toContain("no such file was given")
  })
})

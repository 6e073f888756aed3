/**
 * BlockStorageShape.lock of the Node file backend: two open files of one
 * path in this process conflict exactly as two QEMU processes would (OFD
 * locks belong to the open file, not the process), a refused request
 * keeps what was held, and closing releases everything. The bytes are
 * read back from /proc/locks.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as nodePath from "node:path"
import { Effect, Exit, Scope } from "effect"
import type { LockRequest } from "@qcow2/storage"
import { NO_LOCKS } from "@qcow2/storage"
import { afterAll, describe, expect, it } from "vitest"
import { openNodeFile } from "../src/index.js"

const dir = fs.mkdtempSync(nodePath.join(os.tmpdir(), "qcow2-lock-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/** Bytes of `path` held by OFD locks, sorted. */
const lockedBytes = (path: string): number[] => {
  const stat = fs.statSync(path)
  // /proc/locks names the file MAJOR:MINOR:INODE, the device numbers in hex.
  const major = (stat.dev >> 8) & 0xfff
  const minor = (stat.dev & 0xff) | ((stat.dev >> 12) & 0xfff00)
  const id = `${major.toString(16).padStart(2, "0")}:${minor.toString(16).padStart(2, "0")}:${stat.ino}`
  const bytes: number[] = []
  for (const line of fs.readFileSync("/proc/locks", "utf8").split("\n")) {
    const f = line.trim().split(/\s+/)
    if (f[1] !== "OFDLCK" || f[5] !== id) continue
    for (let b = Number(f[6]); b <= Number(f[7]); b++) bytes.push(b)
  }
  return bytes.sort((a, b) => a - b)
}

const QCOW2_RW: LockRequest = { use: ["consistent read", "write", "resize"], unshared: ["write", "resize"] }
const QCOW2_RO: LockRequest = { use: ["consistent read"], unshared: ["write", "resize"] }
const SHARE_ALL_RO: LockRequest = { use: ["consistent read"], unshared: [] }

describe.skipIf(process.platform !== "linux")("Node file locks (fcntl OFD locks, QEMU's byte layout)", () => {
  it("holds QEMU's bytes, refuses a conflicting open with QEMU's message, keeps its own on refusal and frees all on close", async () => {
    const path = nodePath.join(dir, "image.qcow2")
    fs.writeFileSync(path, new Uint8Array(4096))
    await Effect.runPromise(Effect.gen(function* () {
      const firstScope = yield* Scope.make()
      const first = yield* Scope.provide(firstScope)(openNodeFile(path, { readOnly: false }))
      yield* first.lock!(QCOW2_RW)
      expect(lockedBytes(path)).toEqual([100, 101, 103, 201, 203])

      const secondScope = yield* Scope.make()
      const second = yield* Scope.provide(secondScope)(openNodeFile(path, { readOnly: true }))
      yield* second.lock!(SHARE_ALL_RO)
      const refused = yield* Effect.flip(second.lock!(QCOW2_RO))
      expect(refused.reason).toBe("Locked")
      expect(refused.message).toBe(`Failed to get shared "write" lock\nIs another process using the image [${path}]?`)
      // The refused request added nothing: the second file still holds byte 100 only.
      expect(lockedBytes(path)).toEqual([100, 100, 101, 103, 201, 203])

      const writer = yield* Effect.flip(first.lock!(QCOW2_RW).pipe(Effect.andThen(second.lock!(QCOW2_RW))))
      expect(writer.message).toBe(`Failed to get "write" lock\nIs another process using the image [${path}]?`)

      yield* first.lock!(NO_LOCKS)
      expect(lockedBytes(path)).toEqual([100])
      yield* first.lock!(QCOW2_RO)
      yield* second.lock!(QCOW2_RO)
      expect(lockedBytes(path)).toEqual([100, 100, 201, 201, 203, 203])
      yield* Scope.close(firstScope, Exit.void)
      expect(lockedBytes(path)).toEqual([100, 201, 203])
      yield* Scope.close(secondScope, Exit.void)
      expect(lockedBytes(path)).toEqual([])
    }))
  })
})

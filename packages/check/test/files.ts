/** Shared test helpers: a scratch directory, running qemu tools, reading and patching image files in place. */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll } from "vitest"
import { Effect, type Result } from "effect"
import { openNodeFile } from "@qcow2/storage-node"
import { type CheckError, type CheckResult, checkQcow2 } from "../src/index.js"

/** A scratch directory removed after the test file; `tmp(name)` gives a fresh path in it. */
export const scratch = (prefix: string): ((name: string) => string) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
  let counter = 0
  return (name) => path.join(root, `${counter++}-${name}`)
}

export const sh = (cmd: string, args: ReadonlyArray<string>, cwd?: string): string =>
  execFileSync(cmd, args, { encoding: "utf8", cwd, stdio: ["ignore", "pipe", "pipe"] })

export const readAt = (file: string, offset: number, length: number): Buffer => {
  const fd = fs.openSync(file, "r")
  try {
    const b = Buffer.alloc(length)
    fs.readSync(fd, b, 0, length, offset)
    return b
  } finally {
    fs.closeSync(fd)
  }
}

export const writeAt = (file: string, offset: number, data: Buffer): void => {
  const fd = fs.openSync(file, "r+")
  try {
    fs.writeSync(fd, data, 0, data.length, offset)
  } finally {
    fs.closeSync(fd)
  }
}

export const u64 = (file: string, offset: number): bigint => readAt(file, offset, 8).readBigUInt64BE(0)

export const putU64 = (file: string, offset: number, v: bigint): void => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt.asUintN(64, v))
  writeAt(file, offset, b)
}

export const putU32 = (file: string, offset: number, v: number): void => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  writeAt(file, offset, b)
}

/** The counters of a result (qemu-img's JSON keys, camelCased). */
export type Counters = Omit<CheckResult, "messages">

/** The counters of `qemu-img check --output=json` (absent keys are 0). */
export const countersFromJson = (j: Record<string, number>): Counters => ({
  checkErrors: j["check-errors"] ?? 0,
  corruptions: j["corruptions"] ?? 0,
  leaks: j["leaks"] ?? 0,
  corruptionsFixed: j["corruptions-fixed"] ?? 0,
  leaksFixed: j["leaks-fixed"] ?? 0,
  imageEndOffset: j["image-end-offset"] ?? 0,
  totalClusters: j["total-clusters"] ?? 0,
  allocatedClusters: j["allocated-clusters"] ?? 0,
  fragmentedClusters: j["fragmented-clusters"] ?? 0,
  compressedClusters: j["compressed-clusters"] ?? 0
})

/** Our check (and repair) of a file, its failure as a value. */
export const ourCheckResult = (file: string, repair?: "leaks" | "all"): Promise<Result.Result<CheckResult, CheckError>> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function* () {
        const storage = yield* openNodeFile(file, { readOnly: repair === undefined })
        return yield* Effect.result(checkQcow2(storage, repair ? { repair } : undefined))
      })
    )
  )

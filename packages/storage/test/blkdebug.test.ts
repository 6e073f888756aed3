import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { makeMemoryStorage, type BlockStorageShape, type StorageError } from "../src/index.js"
import { blkdebugConfigFromOptions, makeBlkdebugStorage, mergeBlkdebugConfigs, parseBlkdebugConfigFile, type BlkdebugConfig } from "../src/blkdebug/index.js"
import { blockStorageConformance } from "../src/testing/index.js"

const config = (text: string): BlkdebugConfig => {
  const parsed = parseBlkdebugConfigFile(text)
  if (!parsed.ok) throw new Error(parsed.message)
  return parsed.config
}

/** The errno a request ends with ("ok" when it succeeds). */
const outcome = (effect: Effect.Effect<unknown, StorageError>): Promise<string> =>
  Effect.runPromise(
    effect.pipe(
      Effect.as("ok"),
      Effect.catch((e) => Effect.succeed(e.errno ?? e.reason))
    )
  )

const wrap = (text: string): BlockStorageShape => makeBlkdebugStorage(makeMemoryStorage({ name: "mem" }), config(text))

describe("blkdebug config files", () => {
  it("reads QEMU's [inject-error] and [set-state] sections, with or without blanks around '='", () => {
    const parsed = parseBlkdebugConfigFile(
      '# comment\n[inject-error]\nevent = "l2_load"\nerrno = "28"\nonce ="on"\nsector = "3"\n\n[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n'
    )
    expect(parsed).toEqual({
      ok: true,
      config: {
        rules: [
          { action: "inject-error", event: "l2_load", state: 0, ioTypes: ["read", "write", "write-zeroes", "discard", "flush"], errno: 28, offset: 1536, once: true, immediately: false },
          { action: "set-state", event: "write_aio", state: 1, newState: 2 }
        ]
      }
    })
  })

  it("refuses what QEMU refuses, with its messages", () => {
    expect(parseBlkdebugConfigFile('[inject-error]\nevent = "nonsense"\n')).toEqual({ ok: false, message: "invalid parameter value: nonsense" })
    expect(parseBlkdebugConfigFile('[inject-error]\nerrno = "5"\n')).toEqual({ ok: false, message: "Missing event name for rule" })
    expect(parseBlkdebugConfigFile('[inject-error]\nevent = "l1_update"\nonce = "maybe"\n')).toEqual({ ok: false, message: "Parameter 'once' expects 'on' or 'off'" })
    expect(parseBlkdebugConfigFile('event = "l1_update"\n')).toEqual({ ok: false, message: "no group defined" })
    expect(parseBlkdebugConfigFile('[bogus]\nevent = "l1_update"\n')).toEqual({ ok: false, message: "There is no option group 'bogus'" })
    expect(parseBlkdebugConfigFile("[inject-error]\nevent l1_update\n")).toEqual({ ok: false, message: "parse error" })
  })

  it("takes rules from block options, lists and single rules, file rules first", () => {
    const options = blkdebugConfigFromOptions(
      new Map([
        ["inject-error.0.event", "write_aio"],
        ["inject-error.0.errno", "5"],
        ["set-state.event", "l2_load"],
        ["set-state.new_state", "3"]
      ])
    )
    if (!options.ok) throw new Error(options.message)
    const merged = mergeBlkdebugConfigs(config('[inject-error]\nevent = "l1_update"\n'), options.config)
    expect(merged.rules.map((r) => `${r.action}:${r.event}`)).toEqual(["inject-error:l1_update", "inject-error:write_aio", "set-state:l2_load"])
  })
})

describe("blkdebug filter", () => {
  it("fails every request after the event until the end, or once", async () => {
    const always = wrap('[inject-error]\nevent = "l1_update"\nerrno = "28"\n')
    expect(await outcome(always.write(0, new Uint8Array(8)))).toBe("ok")
    always.debugEvent?.("l2_load")
    expect(await outcome(always.read(0, new Uint8Array(8)))).toBe("ok")
    always.debugEvent?.("l1_update")
    expect(await outcome(always.write(0, new Uint8Array(8)))).toBe("ENOSPC")
    expect(await outcome(always.read(0, new Uint8Array(8)))).toBe("ENOSPC")
    expect(await outcome(always.flush())).toBe("ENOSPC")

    const once = wrap('[inject-error]\nevent = "l1_update"\nonce = "on"\n')
    once.debugEvent?.("l1_update")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("EIO")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("ok")
    once.debugEvent?.("l1_update")
    expect(await outcome(once.read(0, new Uint8Array(8)))).toBe("ok")
  })

  it("matches the request kind and the sector", async () => {
    const storage = wrap('[inject-error]\nevent = "write_aio"\niotype = "write"\nsector = "2"\n')
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.read(0, new Uint8Array(2048)))).toBe("ok")
    expect(await outcome(storage.write(0, new Uint8Array(1024)))).toBe("ok")
    expect(await outcome(storage.write(512, new Uint8Array(1024)))).toBe("EIO")
  })

  it("moves between states: a rule for state 2 fires only after a set-state rule", async () => {
    const storage = wrap('[set-state]\nevent = "write_aio"\nnew_state = "2"\n[inject-error]\nevent = "write_aio"\nstate = "2"\n')
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("ok")
    storage.debugEvent?.("write_aio")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("EIO")
  })

  it("lets a flush through untouched when nothing was written since the last one, as QEMU's block layer does", async () => {
    const storage = wrap('[inject-error]\nevent = "cluster_alloc"\n')
    storage.debugEvent?.("cluster_alloc")
    expect(await outcome(storage.flush())).toBe("ok")
    expect(await outcome(storage.write(0, new Uint8Array(512)))).toBe("EIO")
    expect(await outcome(storage.flush())).toBe("EIO")
  })
})

blockStorageConformance("blkdebug without rules", () => Effect.succeed(makeBlkdebugStorage(makeMemoryStorage({ name: "mem" }), { rules: [] })))

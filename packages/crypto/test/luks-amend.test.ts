import { Effect, Exit } from "effect"
import { describe, expect, it } from "vitest"
import { decodeLuksHeader, makeSectorCipherFactory, type LuksAreaAccess, type LuksKeySlotAmendment } from "../src/index.js"
import { nodeBackend } from "../src/node.js"

const factory = makeSectorCipherFactory(nodeBackend)
const secrets = new Map([
  ["s0", new TextEncoder().encode("zero")],
  ["s1", new TextEncoder().encode("one")]
])
const lookup = (id: string) => secrets.get(id)

/** A fresh area with "zero" in slot 0 (fixed, small iteration counts). */
const freshArea = async () =>
  (await Effect.runPromise(factory.createLuks({ passphrase: "zero", slotIterations: 1000, masterKeyIterations: 1000, cipherAlg: "aes-128" }))).area

class Crash extends Error {}

/** Access to `area` in which write number `crashAt` (0-based) and everything after it never happen. */
const accessTo = (area: Uint8Array, crashAt = Infinity): LuksAreaAccess<Crash> => {
  let writes = 0
  return {
    read: (offset, length) => Effect.succeed(area.slice(offset, offset + length)),
    write: (offset, bytes) => {
      if (writes++ >= crashAt) return Effect.fail(new Crash())
      area.set(bytes, offset)
      return Effect.void
    },
    flush: () => Effect.void
  }
}

const amend = (area: Uint8Array, amendment: LuksKeySlotAmendment, unlock = "zero", crashAt = Infinity) =>
  Effect.runPromiseExit(factory.amendLuks(accessTo(area, crashAt), unlock, { slotIterations: 1000, ...amendment }, lookup))

const opensWith = async (area: Uint8Array, passphrase: string): Promise<number | undefined> => {
  const exit = await Effect.runPromiseExit(factory.openLuks(area, passphrase))
  return Exit.isSuccess(exit) ? exit.value.slot : undefined
}

const message = async (pending: Promise<Exit.Exit<void, unknown>>): Promise<string> => {
  const exit = await pending
  if (Exit.isSuccess(exit)) return "ok"
  const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
  return fail && fail._tag === "Fail" ? (fail.error as Error).message : String(exit.cause)
}

describe("LUKS key-slot amend (qemu-img amend -o encrypt.state=…)", () => {
  it("adds a slot the new passphrase opens, erases by slot and by password, with QEMU's refusals", async () => {
    const area = await freshArea()
    expect(await message(amend(area, { state: "active", newSecret: "s1", keyslot: 3 }))).toBe("ok")
    expect([await opensWith(area, "zero"), await opensWith(area, "one")]).toEqual([0, 3])
    expect(await message(amend(area, { state: "active", newSecret: "s1", keyslot: 3 }))).toBe(
      "Refusing to overwrite active keyslot 3 - please erase it first"
    )
    expect(await message(amend(area, { state: "active", newSecret: "nope" }))).toBe("No secret with id 'nope'")
    expect(await message(amend(area, { state: "active", newSecret: "s1", keyslot: -1 }))).toBe(
      "Invalid keyslot 4294967295 specified, must be between 0 and 7"
    )
    expect(await message(amend(area, { state: "inactive", keyslot: 5 }))).toBe("Given keyslot 5 is already erased (inactive) ")
    expect(await message(amend(area, { state: "inactive", keyslot: 3, oldSecret: "s0" }))).toBe(
      "Given keyslot 3 doesn't contain the given old password for erase operation"
    )
    expect(await message(amend(area, { state: "inactive" }))).toBe(
      "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given"
    )
    expect(await message(amend(area, { state: "inactive", oldSecret: "s0" }))).toBe("ok")
    expect([await opensWith(area, "zero"), await opensWith(area, "one")]).toEqual([undefined, 3])
    expect(await message(amend(area, { state: "inactive", oldSecret: "s1" }))).toContain("refusing operation")
    expect(await message(amend(area, { state: "inactive", keyslot: 3 }))).toBe(
      "Attempt to erase the only active keyslot 3 which will erase all the data in the image irreversibly - refusing operation"
    )
    expect(await message(amend(area, { state: "inactive", keyslot: 3, force: true }))).toBe("ok")
    const header = decodeLuksHeader(area)
    expect(header.keySlots.every((s) => !s.active && s.iterations === 0 && s.salt.every((b) => b === 0))).toBe(true)
  })

  it("an add interrupted after any write leaves the old slot working (material before header)", async () => {
    for (let crashAt = 0; crashAt < 2; crashAt++) {
      const area = await freshArea()
      expect(await message(amend(area, { state: "active", newSecret: "s1" }, "zero", crashAt))).not.toBe("ok")
      expect(await opensWith(area, "zero")).toBe(0)
      expect(await opensWith(area, "one")).toBe(undefined)
      expect(decodeLuksHeader(area).keySlots.filter((s) => s.active)).toHaveLength(1)
    }
  })

  it("an erase interrupted after any write leaves the other slots working (header before material)", async () => {
    const base = await freshArea()
    expect(await message(amend(base, { state: "active", newSecret: "s1" }))).toBe("ok")
    for (const crashAt of [0, 1, 20]) {
      const area = base.slice()
      expect(await message(amend(area, { state: "inactive", keyslot: 1 }, "zero", crashAt))).not.toBe("ok")
      expect(await opensWith(area, "zero")).toBe(0)
    }
  })
})

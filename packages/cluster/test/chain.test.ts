import { afterAll, describe, expect, it } from "vitest"
import { fail, memoryBacking, openEngine, pattern, qemuCheck, qemuImg, qemuIo, run, scratch } from "./engine.js"

const tmp = scratch()
afterAll(() => tmp.cleanup())

describe("Qcow2Engine.makeEmpty / setBacking", () => {
  it("makeEmpty leaves every cluster unallocated (the backing shows again) and frees what they held", async () => {
    const file = tmp.path("empty.qcow2")
    const base = tmp.path("empty-base.qcow2")
    qemuImg("create", "-f", "qcow2", base, "1M")
    qemuImg("create", "-f", "qcow2", "-b", base, "-F", "qcow2", file)
    qemuIo("-c", "write -P 5 0 300k", "-c", "write -z 512k 128k", "-c", "write -c -P 6 768k 64k", file)
    const below = pattern(1 << 20, 3)
    const { engine, save } = await openEngine(file, { backing: memoryBacking(below) })
    await run(engine.makeEmpty())
    await run(engine.flush())
    const out = new Uint8Array(1 << 20)
    await run(engine.read(0, out))
    expect(out).toEqual(below)
    await save(file)
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
    expect(JSON.parse(qemuImg("map", "--output=json", file)).every((r: { depth: number }) => r.depth === 1)).toBe(true)
  })

  it("setBacking rewrites name and format as qemu-img reads them, and refuses a header that no longer fits", async () => {
    const file = tmp.path("backing.qcow2")
    qemuImg("create", "-f", "qcow2", "-o", "cluster_size=512", file, "1M")
    const { engine, save } = await openEngine(file)
    await run(engine.setBacking("some/other-base.img", "raw"))
    await save(file)
    const info = JSON.parse(qemuImg("info", "--output=json", "-U", file)) as Record<string, unknown>
    expect(info["backing-filename"]).toBe("some/other-base.img")
    expect(info["backing-filename-format"]).toBe("raw")
    expect((await fail(engine.setBacking("x".repeat(600), "qcow2"))).reason).toBe("NoSpace")
    expect((await fail(engine.setBacking("x".repeat(1024), "qcow2"))).reason).toBe("InvalidArgument")
    await run(engine.setBacking(undefined, undefined))
    await save(file)
    expect(JSON.parse(qemuImg("info", "--output=json", file))["backing-filename"]).toBeUndefined()
    expect(qemuCheck(file)).toMatchObject({ exitCode: 0 })
  })
})

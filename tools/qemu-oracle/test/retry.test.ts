import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { PBKDF2_TIMING_FAILURE, runQemu, runQemuAsync, spawnQemu } from "../src/index.js"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qemu-oracle-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

/**
 * A stand-in for qemu-img that fails `failures` times with `message`, then
 * prints "done"; it counts its runs in a file next to it.
 */
const fakeTool = (name: string, failures: number, message: string): { tool: string; runs: () => number } => {
  const counter = path.join(dir, `${name}.runs`)
  const tool = path.join(dir, name)
  fs.writeFileSync(
    tool,
    `#!/bin/sh\nn=$(cat ${counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${counter}\n` +
      `if [ $n -le ${failures} ]; then echo "qemu-img: x.qcow2: ${message}" >&2; exit 1; fi\necho done\n`,
    { mode: 0o755 }
  )
  return { tool, runs: () => Number(fs.readFileSync(counter, "utf8")) }
}

describe("QEMU's PBKDF2 timing failure is retried, nothing else is", () => {
  it("runQemu retries it and returns the successful run's output", () => {
    const fake = fakeTool("sync", 2, PBKDF2_TIMING_FAILURE)
    expect(runQemu(fake.tool, [])).toBe("done\n")
    expect(fake.runs()).toBe(3)
  })

  it("runQemuAsync retries it", async () => {
    const fake = fakeTool("async", 3, PBKDF2_TIMING_FAILURE)
    expect(await runQemuAsync(fake.tool, [])).toBe("done\n")
    expect(fake.runs()).toBe(4)
  })

  it("spawnQemu retries it and returns other statuses as they are", () => {
    const fake = fakeTool("spawn", 1, PBKDF2_TIMING_FAILURE)
    expect(spawnQemu(fake.tool, [])).toEqual({ status: 0, stdout: "done\n", stderr: "" })
    const other = fakeTool("spawn-other", 5, "Could not open 'x.qcow2'")
    expect(spawnQemu(other.tool, [])).toEqual({ status: 1, stdout: "", stderr: "qemu-img: x.qcow2: Could not open 'x.qcow2'\n" })
    expect(other.runs()).toBe(1)
  })

  it("any other failure is thrown at once, with QEMU's stderr", async () => {
    const fake = fakeTool("other", 5, "Image is corrupt")
    expect(() => runQemu(fake.tool, [])).toThrow(/Command failed/)
    expect(fake.runs()).toBe(1)
    const later = fakeTool("other-async", 5, "Image is corrupt")
    await expect(runQemuAsync(later.tool, [])).rejects.toMatchObject({ stderr: "qemu-img: x.qcow2: Image is corrupt\n" })
    expect(later.runs()).toBe(1)
  })

  it("gives up after a bounded number of attempts", () => {
    const fake = fakeTool("forever", 1000, PBKDF2_TIMING_FAILURE)
    expect(() => runQemu(fake.tool, [])).toThrow(/Command failed/)
    expect(fake.runs()).toBe(8)
  })
})

/**
 * The words before a subcommand, held to qemu-img 7.2: no arguments,
 * -V/--version, -h/--help, an unknown option or command (messages with the
 * program name swapped, exit codes equal); help lists only this tool's
 * options. Also `pnpm qcow2` run from another directory.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { beforeAll, describe, expect, it } from "vitest"
import { COMMANDS } from "../src/cli/spec.js"
import { CLI_DIR, buildBundle, makeTempDir, qcow2, qemu } from "./helpers.js"

const ROOT = path.resolve(CLI_DIR, "../..")
const asQcow2 = (text: string): string => text.replaceAll("qemu-img", "qcow2")
const EFFECT_CLI_BUILT_INS = ["--wizard", "--completions", "--log-level", "--version, -v"]

describe("qcow2 without a subcommand, as qemu-img", () => {
  let dir: string
  beforeAll(() => {
    buildBundle()
    dir = makeTempDir("qcow2-usage-")
  })

  it.each([[[]], [["-x"]], [["--frob"]], [["frob"]], [["-U", "info", "a.qcow2"]]])("%j: qemu-img's message and exit code", (args) => {
    const ours = qcow2(dir, args)
    const theirs = qemu(dir, "qemu-img", args, true)
    expect(theirs.status).toBe(1)
    expect({ status: ours.status, stdout: ours.stdout, stderr: ours.stderr }).toEqual({ status: 1, stdout: "", stderr: asQcow2(theirs.stderr) })
  })

  it("says 'Not enough arguments' with no arguments", () => {
    expect(qcow2(dir, []).stderr).toBe("qcow2: Not enough arguments\nTry 'qcow2 --help' for more information\n")
  })

  it.each([["-V"], ["--version"]])("%s prints the version and exits 0, in qemu-img's shape", (flag) => {
    const ours = qcow2(dir, [flag])
    const theirs = qemu(dir, "qemu-img", [flag])
    expect(theirs.stdout.split("\n")[0]).toMatch(/^qemu-img version \S+/)
    expect(ours).toMatchObject({ status: 0, stdout: "qcow2 version 0.1.0\n", stderr: "" })
  })

  it("-V wins over what follows, as in qemu-img", () => {
    expect(qcow2(dir, ["-V", "info"]).stdout).toBe("qcow2 version 0.1.0\n")
    expect(qemu(dir, "qemu-img", ["-V", "info"]).status).toBe(0)
  })

  it("-h and --help print the same usage, exit 0, in qemu-img's shape, with this tool's options only", () => {
    const long = qcow2(dir, ["--help"])
    const short = qcow2(dir, ["-h"])
    expect(long.status).toBe(0)
    expect(short).toMatchObject({ status: 0, stdout: long.stdout, stderr: "" })
    const theirs = qemu(dir, "qemu-img", ["--help"]).stdout.split("\n")
    const ours = long.stdout.split("\n")
    // Version line, then the usage line word for word, then the standard options.
    expect(ours[0]).toBe("qcow2 version 0.1.0")
    expect(ours).toContain(asQcow2(theirs.find((l) => l.startsWith("usage:"))!))
    for (const option of ["'-h', '--help'       display this help and exit", "'-V', '--version'    output version information and exit"]) {
      expect(theirs.some((l) => l.trim() === option)).toBe(true)
      expect(ours.some((l) => l.trim() === option)).toBe(true)
    }
    const syntax = ours.slice(ours.indexOf("Command syntax:") + 1)
    for (const name of [...Object.keys(COMMANDS), "io"]) expect(syntax.some((l) => l.startsWith(`  ${name} `)), name).toBe(true)
    expect(syntax.find((l) => l.startsWith("  info "))).toBe(
      "  info [-f format] [--output=output] [--backing-chain] [--object=object] [--image-opts] [-U] [--passphrase-file=passphrase_file] filename"
    )
    for (const builtIn of EFFECT_CLI_BUILT_INS) expect(long.stdout).not.toContain(builtIn)
  })

  it("a subcommand's --help lists its flags and no effect/cli built-ins", () => {
    for (const command of ["info", "convert", "serve"]) {
      const r = qcow2(dir, [command, "--help"])
      expect(r.status).toBe(0)
      expect(r.stdout).toContain(`qcow2 ${command} [flags]`)
      expect(r.stdout).toContain("--help, -h")
      for (const builtIn of EFFECT_CLI_BUILT_INS) expect(r.stdout).not.toContain(builtIn)
    }
    expect(qcow2(dir, ["info", "--wizard"]).status).toBe(1)
  })

  it("run as qemu-img, says what qemu-img says", () => {
    const asQemuImg = spawnSync(process.execPath, [path.join(CLI_DIR, "dist", "qemu-img.mjs")], { cwd: dir, encoding: "utf8" })
    const theirs = qemu(dir, "qemu-img", [], true)
    expect({ status: asQemuImg.status, stderr: asQemuImg.stderr }).toEqual({ status: theirs.status, stderr: theirs.stderr })
  })
})

describe("pnpm qcow2", () => {
  it("resolves relative paths from the directory pnpm was called in", () => {
    const dir = makeTempDir("qcow2-pnpm-cwd-")
    qemu(dir, "qemu-img", ["create", "-f", "qcow2", "here.qcow2", "3M"])
    const r = spawnSync("pnpm", ["--silent", "-C", ROOT, "qcow2", "info", "--output=json", "here.qcow2"], { cwd: dir, encoding: "utf8" })
    expect(r.stderr).toBe("")
    expect(r.status).toBe(0)
    expect(JSON.parse(r.stdout)).toMatchObject({ filename: "here.qcow2", "virtual-size": 3 * 2 ** 20 })
    expect(fs.existsSync(path.join(ROOT, "here.qcow2"))).toBe(false)
  })
})

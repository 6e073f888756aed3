/**
 * The fast command-line parser (src/cli/fast.ts) against effect/cli: every
 * command line the fast parser accepts must parse to the same values under
 * effect/cli (built from the same spec), and the command lines the tests,
 * the bench and users type must take the fast path.
 */
import { describe, expect, it } from "vitest"
import fc from "fast-check"
import { Effect } from "effect"
import { CliOutput, Command } from "effect/cli"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { normalizeArgv } from "../src/argv.js"
import { rootCommand } from "../src/cli/effect-cli.js"
import { fastParse } from "../src/cli/fast.js"
import { COMMANDS, type Parsed } from "../src/cli/spec.js"

const silent: CliOutput.Presenter = { present: () => Effect.void }

/** What effect/cli makes of `argv`: the parsed command line, or "no command" (help, version, an error). */
const viaEffectCli = async (argv: ReadonlyArray<string>): Promise<Parsed | "no command"> => {
  let got: Parsed | undefined
  const root = rootCommand((p) =>
    Effect.sync(() => {
      got = p
    })
  )
  await Effect.runPromiseExit(
    Command.runWith(root, { version: "0" })(argv).pipe(Effect.provide(CliOutput.layerPresenter(silent)), Effect.provide(NodeServices.layer))
  )
  return got ?? "no command"
}

const TYPICAL: ReadonlyArray<ReadonlyArray<string>> = [
  ["info", "a.qcow2"],
  ["info", "--output=json", "--backing-chain", "a.qcow2"],
  ["info", "-U", "--output", "json", "a.qcow2"],
  ["map", "--output=json", "-f", "qcow2", "a.qcow2"],
  ["map", "--start-offset", "1M", "--max-length=2M", "a.qcow2"],
  ["check", "-r", "all", "--output=json", "a.qcow2"],
  ["check", "-q", "a.qcow2"],
  ["compare", "-s", "-F", "raw", "a.qcow2", "b.raw"],
  ["compare", "a.qcow2", "b.qcow2"],
  ["create", "-f", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "a.qcow2", "1M"],
  ["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
  ["create", "--object", "secret,id=s,data=x", "-o", "encrypt.format=luks,encrypt.key-secret=s", "-q", "a.qcow2", "1G"],
  ["convert", "-O", "raw", "a.qcow2", "a.raw"],
  ["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"],
  ["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "a.raw", "a.qcow2"],
  ["convert", "-p", "-S", "0", "-m", "16", "-W", "a.qcow2", "b.raw", "c.qcow2", "out.raw"],
  ["convert", "-n", "--target-is-zero", "-O", "raw", "a.qcow2", "t.raw"],
  ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2", "out.qcow2"],
  ["convert", "--object", "secret,id=s,data=x", "--image-opts", "driver=qcow2,file.filename=a.qcow2,encrypt.key-secret=s", "-O", "raw", "o.raw"],
  ["convert", "-Oraw", "-fqcow2", "a.qcow2", "o.raw"],
  // Repeated options, as qemu-img's getopt takes them: the last one wins (iotest 082).
  ["info", "-f", "qcow2", "-f", "raw", "a"],
  ["convert", "-O", "qcow2", "-O", "raw", "-q", "-q", "a", "b"],
  ["info", "--output", "json", "--output=human", "a"],
  // convert checks its file count itself, after -o help (qemu-img: "Must specify image file name").
  ["convert", "-O", "raw", "a"],
  ["convert", "-O", "qcow2", "-o", "help"]
]

describe("fast command-line parser", () => {
  it("takes the fast path for typical command lines, with effect/cli's values", async () => {
    for (const words of TYPICAL) {
      const argv = normalizeArgv(words)
      const fast = fastParse(argv)
      expect(fast, words.join(" ")).toBeDefined()
      expect(await viaEffectCli(argv), words.join(" ")).toEqual(fast)
    }
  })

  it("leaves help, version and mistakes to effect/cli", () => {
    for (const words of [
      [],
      ["--help"],
      ["--version"],
      ["info", "--help"],
      ["info", "-h", "a"],
      ["convert", "-v"],
      ["frob", "a"],
      ["info"],
      ["info", "a", "b"],
      ["info", "--output=xml", "a"],
      ["info", "--output"],
      ["convert", "--no-compress", "a", "b"],
      ["convert", "-c", "yes", "a", "b"],
      ["convert", "--compress=true", "a", "b"],
      ["-U", "info", "a"]
    ]) {
      expect(fastParse(normalizeArgv(words)), words.join(" ")).toBeUndefined()
    }
  })

  it("declares no flag that collides with effect/cli's built-in ones", () => {
    const builtIn = new Set(["help", "h", "version", "v", "wizard", "completions", "log-level"])
    for (const spec of Object.values(COMMANDS)) {
      for (const flag of Object.values(spec.flags)) {
        expect(builtIn.has(flag.name), flag.name).toBe(false)
        if (flag.alias !== undefined) expect(builtIn.has(flag.alias), flag.alias).toBe(false)
      }
    }
  })

  it("agrees with effect/cli on random command lines it accepts", async () => {
    const values = ["a.qcow2", "b", "raw", "json", "human", "1M", "-1", "yes", "0", "", "-", "x=y"]
    const odd = ["--", "--help", "-h", "-v", "--version", "-Uq", "-cp", "-pO", "-rU", "--frob", "-z", "--=x"]
    const vocabularyOf = (spec: (typeof COMMANDS)[keyof typeof COMMANDS]): string[] => {
      const words: string[] = []
      for (const flag of Object.values(spec.flags)) {
        words.push(`--${flag.name}`, `--${flag.name}=raw`, `--no-${flag.name}`)
        if (flag.alias !== undefined) words.push(`-${flag.alias}`, `-${flag.alias}=json`)
      }
      return words
    }
    const commandLine = fc.constantFrom(...Object.keys(COMMANDS), "frob").chain((name) => {
      const own = name in COMMANDS ? vocabularyOf(COMMANDS[name as keyof typeof COMMANDS]) : ["--format"]
      const word = fc.oneof(
        { weight: 5, arbitrary: fc.constantFrom(...own) },
        { weight: 6, arbitrary: fc.constantFrom(...values) },
        { weight: 1, arbitrary: fc.constantFrom(...odd) }
      )
      return fc.array(word, { maxLength: 7 }).map((rest) => [name, ...rest])
    })
    let accepted = 0
    let total = 0
    await fc.assert(
      fc.asyncProperty(commandLine, async (argv) => {
        const fast = fastParse(argv)
        total++
        if (fast === undefined) return
        accepted++
        expect(await viaEffectCli(argv)).toEqual(fast)
      }),
      { numRuns: 3000 }
    )
    // The property means little if the fast parser accepts almost nothing.
    expect(accepted / total).toBeGreaterThan(0.05)
  }, 120_000)
})

describe("repeated options (qemu-img's getopt: the last one wins)", () => {
  it("takes the last value of a flag given twice, in both parsers", async () => {
    const argv = normalizeArgv(["convert", "-f", "qcow2", "-f", "raw", "-O", "qcow2", "-O", "raw", "-p", "-p", "a", "b"])
    const fast = fastParse(argv)
    expect(fast?.values).toMatchObject({ format: "raw", targetFormat: "raw", progress: true })
    expect(await viaEffectCli(argv)).toEqual(fast)
  })
})

import { describe, expect, it } from "vitest"
import { normalizeArgs } from "../src/argv.js"
import { COMMANDS } from "../src/cli/spec.js"

describe("argv normalization follows the command table", () => {
  for (const spec of Object.values(COMMANDS)) {
    for (const flag of Object.values(spec.flags)) {
      if (flag.alias === undefined) continue
      const letter = flag.alias
      if (flag.kind === "boolean") {
        it(`${spec.name} -${letter}: a switch, expanded in a cluster with -h`, () => {
          expect(normalizeArgs(spec.name, [`-${letter}h`, "x"])).toEqual([`-${letter}`, "-h", "x"])
        })
      } else {
        it(`${spec.name} -${letter}: takes a value, glued or the next word (never rewritten)`, () => {
          expect(normalizeArgs(spec.name, [`-${letter}v`, "x"])).toEqual([`-${letter}`, "v", "x"])
          expect(normalizeArgs(spec.name, [`-h${letter}`, "-hh", "x"])).toEqual(["-h", `-${letter}`, "-hh", "x"])
        })
      }
    }
    for (const flag of Object.values(spec.flags)) {
      if (flag.kind === "boolean") continue
      it(`${spec.name} --${flag.name}: its value is never rewritten`, () => {
        expect(normalizeArgs(spec.name, [`--${flag.name}`, "-hh", "x"])).toEqual([`--${flag.name}`, "-hh", "x"])
      })
    }
  }
})

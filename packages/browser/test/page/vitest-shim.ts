/**
 * The few `vitest` functions the shared storage conformance suite uses
 * (describe, it, expect(...).toBe / toBeGreaterThan / toBeGreaterThanOrEqual,
 * expect.fail), for running it inside a browser page: the page bundle maps
 * the `vitest` import here, tests are collected, then run one after another
 * by `runCollected`.
 */
export interface CollectedTest {
  readonly name: string
  readonly run: () => unknown
}

const collected: Array<CollectedTest> = []
const prefixes: Array<string> = []

export const describe = (name: string, body: () => void): void => {
  prefixes.push(name)
  try {
    body()
  } finally {
    prefixes.pop()
  }
}

export const it = (name: string, run: () => unknown): void => {
  collected.push({ name: [...prefixes, name].join(" > "), run })
}

class AssertionError extends Error {}

const show = (value: unknown): string => (typeof value === "string" ? JSON.stringify(value) : String(value))

export const expect = Object.assign(
  (actual: unknown, what?: string) => {
    const fail = (message: string): never => {
      throw new AssertionError(what !== undefined ? `${what}: ${message}` : message)
    }
    return {
      toBe: (expected: unknown) => {
        if (!Object.is(actual, expected)) fail(`expected ${show(actual)} to be ${show(expected)}`)
      },
      toBeGreaterThan: (bound: number) => {
        if (!((actual as number) > bound)) fail(`expected ${show(actual)} to be greater than ${bound}`)
      },
      toBeGreaterThanOrEqual: (bound: number) => {
        if (!((actual as number) >= bound)) fail(`expected ${show(actual)} to be at least ${bound}`)
      }
    }
  },
  {
    fail: (message: string): never => {
      throw new AssertionError(message)
    }
  }
)

/** The outcome of one collected test. */
export interface TestOutcome {
  readonly name: string
  readonly ok: boolean
  readonly error?: string
}

/** Runs (and forgets) every test collected so far, in order. */
export const runCollected = async (): Promise<Array<TestOutcome>> => {
  const tests = collected.splice(0)
  const outcomes: Array<TestOutcome> = []
  for (const test of tests) {
    try {
      await test.run()
      outcomes.push({ name: test.name, ok: true })
    } catch (e) {
      outcomes.push({ name: test.name, ok: false, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) })
    }
  }
  return outcomes
}

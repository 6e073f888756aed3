/**
 * A small seeded PRNG (mulberry32) so tests and crash simulations are
 * reproducible from a seed. Returns integers in [0, 2^32).
 */
export const seededRandom = (seed: number): (() => number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
}

/** Deterministic non-trivial bytes: `length` bytes from `seed`. */
export const patternBytes = (length: number, seed: number): Uint8Array => {
  const next = seededRandom(seed)
  const out = new Uint8Array(length)
  let i = 0
  for (; i + 4 <= length; i += 4) {
    const v = next()
    out[i] = v
    out[i + 1] = v >>> 8
    out[i + 2] = v >>> 16
    out[i + 3] = v >>> 24
  }
  for (; i < length; i++) out[i] = next()
  return out
}

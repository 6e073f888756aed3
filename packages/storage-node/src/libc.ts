/**
 * The C library calls Node has no binding for (fcntl's OFD locks, lseek's
 * SEEK_DATA/SEEK_HOLE, preadv2's RWF_NOWAIT), reached through koffi: a
 * foreign-function package whose npm tarballs carry prebuilt binaries (no
 * build or download at install). Loaded once per process, on first use;
 * undefined where it cannot be had (not Linux on x64/arm64, koffi
 * missing), and each caller then falls back as QEMU does without the call.
 */
import { koffi } from "@qcow2/native"

/** A C function bound by koffi. */
export interface CFunction {
  (...args: ReadonlyArray<number | bigint | string | Uint8Array>): number | bigint
}

/** What the callers need of koffi. */
export interface Libc {
  /** Binds a libc function from its C declaration, e.g. `"int fcntl(int fd, int cmd, ...)"`. */
  readonly func: (declaration: string) => CFunction
  /** errno as the last bound call left it. */
  readonly errno: () => number
  /** The address of a typed array's first byte (its backing store does not move). */
  readonly address: (value: Uint8Array) => bigint
}

const load = async (): Promise<Libc | undefined> => {
  const loader = koffi()
  if (loader === undefined) return undefined
  try {
    const library = loader.load("libc.so.6")
    return { func: (declaration) => library.func(declaration), errno: () => loader.errno(), address: (value) => loader.address(value) }
  } catch {
    return undefined
  }
}

let loaded: Promise<Libc | undefined> | undefined

/** The process's libc binding; undefined where it cannot be had. */
export const libc = (): Promise<Libc | undefined> => (loaded ??= load())

/**
 * `bind(libc)` once per process, for a caller's own set of calls; undefined
 * when libc or one of its functions cannot be had (`bind` throwing, e.g.
 * an old libc without preadv2).
 */
export const onceWithLibc = <A>(bind: (c: Libc) => A | undefined): (() => Promise<A | undefined>) => {
  let bound: Promise<A | undefined> | undefined
  return () =>
    (bound ??= libc().then((c) => {
      if (c === undefined) return undefined
      try {
        return bind(c)
      } catch {
        return undefined
      }
    }))
}

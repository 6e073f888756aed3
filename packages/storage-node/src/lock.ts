/**
 * Image locking as QEMU's file driver does it (block/file-posix.c,
 * raw_handle_perm_lock), so that this toolkit and QEMU processes see each
 * other's opens of the same file.
 *
 * QEMU holds shared (F_RDLCK) open-file-description locks on single bytes:
 * 100 + bit for each permission it uses, 200 + bit for each it does not
 * share (bits as in {@link LOCK_PERMISSIONS}). Taking a request is two
 * steps, in QEMU's order: lock the bytes of the old and new requests
 * together, then test with F_OFD_GETLK whether any other open file holds
 * a byte that conflicts (200 + bit of a permission used, 100 + bit of one
 * not shared); on success the bytes only the old request needed are
 * released, on a conflict those the new one added are. Two openers racing
 * may both fail, never both succeed.
 *
 * Node has no fcntl(2): it is called through koffi (libc.ts), loaded on
 * the first lock. OFD locks belong to the open file
 * description, so they last exactly as long as the descriptor and are not
 * lost when another descriptor of the same file closes (as POSIX locks
 * are). Where they cannot be had (not Linux on x64/arm64, koffi missing, a
 * kernel without F_OFD_*), nothing is locked: QEMU's default
 * (locking=auto) also skips locking without OFD locks.
 */
import * as fs from "node:fs"
import { LOCK_PERMISSIONS, StorageError } from "@qcow2/storage"
import type { LockPermission, LockRequest } from "@qcow2/storage"
import { onceWithLibc, type Libc } from "./libc.js"

/** fcntl(2) commands and lock types; the same values on every Linux architecture loaded here. */
const F_OFD_GETLK = 36
const F_OFD_SETLK = 37
const F_RDLCK = 0
const F_WRLCK = 1
const F_UNLCK = 2

/** QEMU's RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE. */
const PERM_BASE = 100
const SHARED_BASE = 200

const EAGAIN = 11
const EACCES = 13

/** fcntl(fd, cmd, struct flock *) and the errno it left. */
interface Syscalls {
  readonly fcntl: (fd: number, cmd: number, lock: Uint8Array) => number
  readonly errno: () => number
}

/**
 * `struct flock` on x86_64 and aarch64 Linux (little-endian, LP64):
 * short l_type @0, short l_whence @2, off_t l_start @8, off_t l_len @16,
 * pid_t l_pid @24; 32 bytes. l_whence 0 is SEEK_SET.
 */
const flock = (type: number, start: number): Uint8Array => {
  const bytes = new Uint8Array(32)
  const view = new DataView(bytes.buffer)
  view.setInt16(0, type, true)
  view.setBigInt64(8, BigInt(start), true)
  view.setBigInt64(16, 1n, true)
  return bytes
}

const lockType = (lock: Uint8Array): number => new DataView(lock.buffer, lock.byteOffset, lock.byteLength).getInt16(0, true)

/** fcntl through libc, if OFD locks work here. */
const bindSyscalls = (c: Libc): Syscalls | undefined => {
  const fcntl = c.func("int fcntl(int fd, int cmd, ...)")
  const syscalls: Syscalls = {
    fcntl: (fd, cmd, lock) => Number(fcntl(fd, cmd, "void *", lock)),
    errno: () => c.errno()
  }
  // QEMU's probe: F_OFD_GETLK fails with EINVAL on kernels before 3.15.
  const probe = fs.openSync("/dev/null", "r")
  try {
    return syscalls.fcntl(probe, F_OFD_GETLK, flock(F_WRLCK, 0)) === 0 ? syscalls : undefined
  } finally {
    fs.closeSync(probe)
  }
}

/** The fcntl binding, loaded once per process; undefined where locks cannot be had. */
const syscalls = onceWithLibc(bindSyscalls)

const bitsOf = (permissions: ReadonlyArray<LockPermission>): number =>
  permissions.reduce((bits, p) => bits | (1 << LOCK_PERMISSIONS.indexOf(p)), 0)

const EACH_BIT = LOCK_PERMISSIONS.map((name, bit) => ({ name, bit }))

/** strerror() of the few errors fcntl locking returns. */
const describeErrno = (errno: number): string =>
  ({ 9: "Bad file descriptor", 22: "Invalid argument", 37: "No locks available", 4: "Interrupted system call" } as Record<number, string>)[errno] ??
  `error ${errno}`

/**
 * The locks one open file holds (QEMU's locked_perm / locked_shared_perm):
 * owned by the open file, released by the kernel when it closes.
 */
export class FileLocks {
  private used = 0
  private unshared = 0

  constructor(
    private readonly fd: number,
    private readonly location: string
  ) {}

  /** Takes `request` (see the module comment); a no-op where locks cannot be had. */
  async apply(request: LockRequest): Promise<StorageError | undefined> {
    const sys = await syscalls()
    if (sys === undefined) return undefined
    const use = bitsOf(request.use)
    const unshared = bitsOf(request.unshared)
    const [usedBefore, unsharedBefore] = [this.used, this.unshared]
    const failed = this.set(sys, usedBefore | use, unsharedBefore | unshared)
    const refused = failed ?? this.conflict(sys, use, unshared)
    if (refused !== undefined) {
      // Back to what was held before (QEMU's RAW_PL_ABORT).
      this.set(sys, usedBefore, unsharedBefore)
      return refused
    }
    this.set(sys, use, unshared)
    return undefined
  }

  /** Locks the bytes of `use`/`unshared` not yet held and releases the others. */
  private set(sys: Syscalls, use: number, unshared: number): StorageError | undefined {
    const heldBefore = [this.used, this.unshared]
    const wanted = [use, unshared]
    for (const [range, base] of [PERM_BASE, SHARED_BASE].entries()) {
      for (const { bit } of EACH_BIT) {
        const mask = 1 << bit
        const want = (wanted[range]! & mask) !== 0
        const held = (heldBefore[range]! & mask) !== 0
        if (want === held) continue
        if (sys.fcntl(this.fd, F_OFD_SETLK, flock(want ? F_RDLCK : F_UNLCK, base + bit)) !== 0) {
          const errno = sys.errno()
          const message = `Failed to ${want ? "lock" : "unlock"} byte ${base + bit}`
          return new StorageError({
            reason: "Io",
            message: errno === EAGAIN || errno === EACCES ? message : `${message}: ${describeErrno(errno)}`,
            location: this.location
          })
        }
        if (range === 0) this.used ^= mask
        else this.unshared ^= mask
      }
    }
    return undefined
  }

  /** QEMU's raw_check_lock_bytes: the first byte another open file holds against this request. */
  private conflict(sys: Syscalls, use: number, unshared: number): StorageError | undefined {
    const checks = [
      ...EACH_BIT.filter(({ bit }) => (use & (1 << bit)) !== 0).map(({ name, bit }) => ({ offset: SHARED_BASE + bit, what: `"${name}"` })),
      ...EACH_BIT.filter(({ bit }) => (unshared & (1 << bit)) !== 0).map(({ name, bit }) => ({ offset: PERM_BASE + bit, what: `shared "${name}"` }))
    ]
    for (const { offset, what } of checks) {
      const probe = flock(F_WRLCK, offset)
      const failed = sys.fcntl(this.fd, F_OFD_GETLK, probe) !== 0
      if (!failed && lockType(probe) === F_UNLCK) continue
      const errno = failed ? sys.errno() : EAGAIN
      const message = `Failed to get ${what} lock`
      return new StorageError({
        reason: errno === EAGAIN || errno === EACCES ? "Locked" : "Io",
        message: `${errno === EAGAIN || errno === EACCES ? message : `${message}: ${describeErrno(errno)}`}\nIs another process using the image [${this.location}]?`,
        location: this.location
      })
    }
    return undefined
  }
}

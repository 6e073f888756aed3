/**
 * Running qemu-img and qemu-io from tests.
 *
 * QEMU sizes a new LUKS key slot by timing PBKDF2 with the thread's CPU time
 * (crypto/pbkdf.c). When the first timed batch measures 0 ms, which happens
 * on machines whose CPU accounting is tick-based or busy, it gives up with
 * "Unable to get accurate CPU usage" whatever iter-time was asked for. Any
 * command that creates a key slot can hit it: create, amend, convert and
 * measure with encrypt options. The helpers here retry that one failure and
 * let every other failure through unchanged.
 */
import {
  execFile,
  execFileSync,
  spawnSync,
  type ExecFileOptions,
  type ExecFileSyncOptions,
  type SpawnSyncOptions
} from "node:child_process"

/** The message QEMU prints when its PBKDF2 timing loop measured nothing. */
export const PBKDF2_TIMING_FAILURE = "Unable to get accurate CPU usage"

const ATTEMPTS = 8

const isTimingFailure = (error: unknown): boolean => {
  const stderr = (error as { stderr?: string | Buffer } | null)?.stderr
  return stderr !== undefined && String(stderr).includes(PBKDF2_TIMING_FAILURE)
}

/**
 * `execFileSync(tool, args)` with UTF-8 output, retried while QEMU fails to
 * time PBKDF2. stderr is captured (not inherited) so the failure can be seen;
 * the thrown error of a real failure carries it as usual.
 */
export const runQemu = (tool: string, args: ReadonlyArray<string>, options: ExecFileSyncOptions = {}): string => {
  for (let attempt = 1; ; attempt++) {
    try {
      return String(execFileSync(tool, args, { stdio: "pipe", ...options, encoding: "utf8" }))
    } catch (error) {
      if (attempt >= ATTEMPTS || !isTimingFailure(error)) throw error
    }
  }
}

/** The asynchronous form of {@link runQemu}: resolves with stdout. */
export const runQemuAsync = async (tool: string, args: ReadonlyArray<string>, options: ExecFileOptions = {}): Promise<string> => {
  for (let attempt = 1; ; attempt++) {
    try {
      return await new Promise<string>((resolve, reject) =>
        execFile(tool, args, { ...options, encoding: "utf8" }, (error, stdout, stderr) =>
          error ? reject(Object.assign(error, { stdout, stderr })) : resolve(stdout)
        )
      )
    } catch (error) {
      if (attempt >= ATTEMPTS || !isTimingFailure(error)) throw error
    }
  }
}

/** What a finished qemu-img or qemu-io process printed and returned. */
export interface QemuRun {
  readonly status: number
  readonly stdout: string
  readonly stderr: string
}

/**
 * `spawnSync(tool, args)` with UTF-8 output, retried while QEMU fails to time
 * PBKDF2; any other exit status is returned, not thrown.
 */
export const spawnQemu = (tool: string, args: ReadonlyArray<string>, options: SpawnSyncOptions = {}): QemuRun => {
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync(tool, args, { maxBuffer: 256 << 20, ...options, encoding: "utf8" })
    const run = { status: r.status ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
    if (run.status === 0 || attempt >= ATTEMPTS || !run.stderr.includes(PBKDF2_TIMING_FAILURE)) return run
  }
}

/**
 * The command line, declared once: every subcommand's flags and arguments.
 *
 * `argv.ts` takes the getopt letters and which of them take a value from
 * it. Two parsers read this table. `fast.ts` parses the common, valid command
 * lines without loading effect/cli (whose modules cost ~0.1 s of start-up);
 * `effect-cli.ts` builds the effect/cli commands from it and handles
 * everything else (--help, --version, mistakes and their messages). Both
 * produce the same `Values` for a command line the fast parser accepts;
 * test/fastparse.test.ts checks that against effect/cli.
 *
 * No imports here: the entry chunk stays small.
 */

/** A flag: `name` is the long name (`--name`), `alias` a one-letter short name. */
export type FlagSpec =
  /** Optional string: undefined when absent. */
  | { readonly kind: "string"; readonly name: string; readonly alias?: string; readonly description?: string }
  /** String with a default. */
  | { readonly kind: "stringDefault"; readonly name: string; readonly alias?: string; readonly description?: string; readonly default: string }
  /** Boolean switch, false when absent. */
  | { readonly kind: "boolean"; readonly name: string; readonly alias?: string; readonly description?: string }
  /** One of `choices`, `default` when absent. */
  | {
      readonly kind: "choice"
      readonly name: string
      readonly alias?: string
      readonly description?: string
      readonly choices: ReadonlyArray<string>
      readonly default: string
    }
  /** Repeatable string: every occurrence, in order. */
  | { readonly kind: "repeat"; readonly name: string; readonly alias?: string; readonly description?: string }

/**
 * A positional argument: exactly one, zero or one, or any number
 * ("sourcesAndTarget" too, shown as two and more in the usage: the command
 * checks the count itself, as qemu-img convert does after `-o help`).
 */
export interface ArgSpec {
  readonly name: string
  readonly kind: "one" | "optional" | "sourcesAndTarget" | "many"
}

export interface CommandSpec {
  readonly name: string
  readonly description: string
  readonly flags: Readonly<Record<string, FlagSpec>>
  readonly args: Readonly<Record<string, ArgSpec>>
}

type FlagValue<F extends FlagSpec> = F extends { readonly kind: "string" }
  ? string | undefined
  : F extends { readonly kind: "boolean" }
    ? boolean
    : F extends { readonly kind: "repeat" }
      ? ReadonlyArray<string>
      : string

type ArgValue<A extends ArgSpec> = A["kind"] extends "one" ? string : A["kind"] extends "optional" ? string | undefined : ReadonlyArray<string>

/** Parsed values of one command line, keyed like the spec. */
export type Values<C extends CommandSpec> = { readonly [K in keyof C["flags"]]: FlagValue<C["flags"][K]> } & {
  readonly [K in keyof C["args"]]: ArgValue<C["args"][K]>
}

// ---- shared flags ---------------------------------------------------------

const format = { kind: "string", name: "format", alias: "f", description: "image format (qcow2 or raw); probed when omitted" } as const
const output = { kind: "choice", name: "output", description: "output format", choices: ["human", "json"], default: "human" } as const
const object = {
  kind: "repeat",
  name: "object",
  description: "secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]: a passphrase for encrypt.key-secret"
} as const
const imageOpts = {
  kind: "boolean",
  name: "image-opts",
  description: "image names are option strings: driver=qcow2,file.filename=PATH,encrypt.key-secret=ID"
} as const
const forceShare = { kind: "boolean", name: "force-share", alias: "U", description: "share the image with other users: take no lock that refuses them (read-only opens only)" } as const
const passphraseFile = { kind: "string", name: "passphrase-file", description: "file holding the passphrase of an encrypted image" } as const
const quiet = { kind: "boolean", name: "quiet", alias: "q", description: "print nothing but errors" } as const
const sourceCache = { kind: "string", name: "source-cache", alias: "T", description: "accepted for compatibility" } as const

const common = { object, imageOpts, forceShare, passphraseFile } as const

// ---- subcommands ----------------------------------------------------------

export const info = {
  name: "info",
  description: "show image information like qemu-img info",
  flags: { format, output, backingChain: { kind: "boolean", name: "backing-chain" }, ...common },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const map = {
  name: "map",
  description: "show the guest-to-host mapping like qemu-img map",
  flags: {
    format,
    output,
    startOffset: { kind: "string", name: "start-offset" },
    maxLength: { kind: "string", name: "max-length" },
    ...common
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const check = {
  name: "check",
  description: "check (and repair) an image like qemu-img check",
  flags: {
    format,
    output,
    repair: { kind: "string", name: "repair", alias: "r", description: "leaks or all" },
    quiet,
    sourceCache,
    ...common
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const compare = {
  name: "compare",
  description: "compare the contents of two images like qemu-img compare",
  flags: {
    format,
    format2: { kind: "string", name: "format2", alias: "F", description: "format of the second image" },
    strict: { kind: "boolean", name: "strict", alias: "s" },
    progress: { kind: "boolean", name: "progress", alias: "p" },
    quiet,
    sourceCache,
    ...common
  },
  args: { file1: { name: "filename1", kind: "one" }, file2: { name: "filename2", kind: "one" } }
} as const satisfies CommandSpec

export const create = {
  name: "create",
  description: "create an image like qemu-img create",
  flags: {
    format: { kind: "string", name: "format", alias: "f", description: "qcow2 (default; raw when run as qemu-img, as qemu-img) or raw" },
    options: { kind: "repeat", name: "options", alias: "o", description: "name=value,… creation options" },
    backing: { kind: "string", name: "backing", alias: "b", description: "backing file" },
    backingFormat: { kind: "string", name: "backing-format", alias: "F", description: "backing file format" },
    unsafe: { kind: "boolean", name: "unsafe", alias: "u", description: "do not open the backing file" },
    quiet,
    object,
    passphraseFile
  },
  args: { file: { name: "filename", kind: "optional" }, size: { name: "size", kind: "optional" } }
} as const satisfies CommandSpec

export const convert = {
  name: "convert",
  description: "convert images like qemu-img convert (raw or qcow2 target)",
  flags: {
    format,
    targetFormat: { kind: "stringDefault", name: "target-format", alias: "O", description: "raw (default) or qcow2", default: "raw" },
    options: { kind: "repeat", name: "options", alias: "o", description: "name=value,… target creation options" },
    compress: { kind: "boolean", name: "compress", alias: "c", description: "compress the qcow2 target" },
    sparseSize: {
      kind: "string",
      name: "sparse-size",
      alias: "S",
      description: "zero runs at least this long stay holes (default 4k; 0 = write all)"
    },
    progress: { kind: "boolean", name: "progress", alias: "p" },
    quiet,
    noCreate: { kind: "boolean", name: "no-create", alias: "n", description: "the target exists; do not create it" },
    parallel: { kind: "string", name: "parallel", alias: "m", description: "requests in flight (default 8)" },
    outOfOrder: { kind: "boolean", name: "out-of-order", alias: "W", description: "allow out-of-order writes (qcow2 targets)" },
    backing: { kind: "string", name: "backing", alias: "B", description: "backing file of the target" },
    backingFormat: { kind: "string", name: "backing-format", alias: "F" },
    cache: {
      kind: "string",
      name: "cache",
      alias: "t",
      description: "target cache mode; 'unsafe' (the default, as in qemu-img convert) skips flushes"
    },
    sourceCache,
    targetIsZero: { kind: "boolean", name: "target-is-zero" },
    snapshot: { kind: "string", name: "snapshot", alias: "l", description: "read this internal snapshot: snapshot.id=ID,snapshot.name=NAME or an ID or name" },
    salvage: { kind: "boolean", name: "salvage", description: "continue past read errors, zeros in place of what cannot be read" },
    copyRange: { kind: "boolean", name: "copy-range-offloading", alias: "C", description: "copy offloading: data copied as it is, without zero detection" },
    bitmaps: { kind: "boolean", name: "bitmaps", description: "copy the persistent bitmaps (qcow2 source and target)" },
    skipBrokenBitmaps: { kind: "boolean", name: "skip-broken-bitmaps", description: "with --bitmaps: leave out inconsistent bitmaps" },
    ...common
  },
  args: { files: { name: "filename", kind: "sourcesAndTarget" } }
} as const satisfies CommandSpec

export const snapshot = {
  name: "snapshot",
  description: "list, create, apply or delete internal snapshots like qemu-img snapshot",
  flags: {
    list: { kind: "boolean", name: "list", alias: "l", description: "list the snapshots" },
    create: { kind: "string", name: "create", alias: "c", description: "create a snapshot with this name" },
    apply: { kind: "string", name: "apply", alias: "a", description: "revert the image to this snapshot (ID or name)" },
    delete: { kind: "string", name: "delete", alias: "d", description: "delete the snapshot with this name" },
    quiet,
    ...common
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const serve = {
  name: "serve",
  description: "export an image over NBD like qemu-nbd (serves until killed, or until the last client leaves without -t)",
  flags: {
    format,
    readOnly: { kind: "boolean", name: "read-only", alias: "r", description: "export read-only" },
    port: { kind: "string", name: "port", alias: "p", description: "TCP port to listen on (default 10809; 0 = any free port)" },
    bind: { kind: "string", name: "bind", alias: "b", description: "address to bind to (default 0.0.0.0)" },
    socket: { kind: "string", name: "socket", alias: "k", description: "absolute path of a Unix socket to listen on instead of TCP" },
    exportName: { kind: "string", name: "export-name", alias: "x", description: "export name (default empty)" },
    description: { kind: "string", name: "description", alias: "D", description: "human-readable description of the export" },
    shared: { kind: "string", name: "shared", alias: "e", description: "clients served at once (default 1; 0 = no limit)" },
    persistent: { kind: "boolean", name: "persistent", alias: "t", description: "keep serving after the last client disconnects" },
    allocationDepth: { kind: "boolean", name: "allocation-depth", alias: "A", description: "offer the qemu:allocation-depth metadata context" },
    nocache: { kind: "boolean", name: "nocache", alias: "n", description: "same as --cache=none" },
    cache: { kind: "string", name: "cache", description: "writeback (default), writethrough, directsync, none or unsafe" },
    // No -v: effect/cli gives every command -v for --version.
    verbose: { kind: "boolean", name: "verbose", description: "print the NBD URI served on stderr" },
    object,
    imageOpts,
    passphraseFile
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const commit = {
  name: "commit",
  description: "commit an overlay into its backing chain like qemu-img commit",
  flags: {
    format,
    cache: { kind: "string", name: "cache", alias: "t", description: "cache mode (accepted)" },
    base: { kind: "string", name: "base", alias: "b", description: "commit down to this image of the chain (implies -d)" },
    drop: { kind: "boolean", name: "drop", alias: "d", description: "leave the overlay as it is (do not empty it)" },
    progress: { kind: "boolean", name: "progress", alias: "p" },
    quiet,
    rateLimit: { kind: "string", name: "rate-limit", alias: "r", description: "accepted, ignored" },
    ...common
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const bench = {
  name: "bench",
  description: "run a simple image benchmark like qemu-img bench",
  flags: {
    count: { kind: "string", name: "count", alias: "c", description: "number of requests (default 75000)" },
    depth: { kind: "string", name: "depth", alias: "d", description: "requests in flight at once (default 64)" },
    format,
    flushInterval: { kind: "string", name: "flush-interval", description: "flush after every N requests (write tests)" },
    aio: { kind: "string", name: "aio", alias: "i", description: "threads, native or io_uring (accepted; Node's I/O is its own)" },
    native: { kind: "boolean", name: "native", alias: "n", description: "aio=native" },
    noDrain: { kind: "boolean", name: "no-drain", description: "flush without waiting for the requests in flight" },
    offset: { kind: "string", name: "offset", alias: "o", description: "offset of the first request" },
    pattern: { kind: "string", name: "pattern", description: "byte written by write tests (default 0)" },
    quiet,
    bufferSize: { kind: "string", name: "buffer-size", alias: "s", description: "bytes per request (default 4096)" },
    stepSize: { kind: "string", name: "step-size", alias: "S", description: "offset step between requests (default: the buffer size)" },
    cache: { kind: "string", name: "cache", alias: "t", description: "cache mode (default writeback)" },
    write: { kind: "boolean", name: "write", alias: "w", description: "write test (default: read)" },
    forceShare,
    imageOpts
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const rebase = {
  name: "rebase",
  description: "change the backing file of an image like qemu-img rebase",
  flags: {
    format,
    backing: { kind: "string", name: "backing", alias: "b", description: "new backing file (\"\" detaches)" },
    backingFormat: { kind: "string", name: "backing-format", alias: "F", description: "format of the new backing file" },
    unsafe: { kind: "boolean", name: "unsafe", alias: "u", description: "only rewrite the backing file name and format" },
    progress: { kind: "boolean", name: "progress", alias: "p" },
    quiet,
    cache: { kind: "string", name: "cache", alias: "t", description: "cache mode (accepted)" },
    sourceCache,
    ...common
  },
  args: { file: { name: "filename", kind: "one" } }
} as const satisfies CommandSpec

export const measure = {
  name: "measure",
  description: "compute the size of a new image like qemu-img measure",
  flags: {
    format,
    output: { kind: "string", name: "output", description: "human (default) or json" },
    targetFormat: { kind: "stringDefault", name: "target-format", alias: "O", description: "raw (default) or qcow2", default: "raw" },
    options: { kind: "repeat", name: "options", alias: "o", description: "name=value,… creation options" },
    snapshot: { kind: "string", name: "snapshot", alias: "l", description: "measure an internal snapshot" },
    size: { kind: "string", name: "size", description: "virtual size of a new image (instead of FILE)" },
    ...common
  },
  args: { files: { name: "filename", kind: "many" } }
} as const satisfies CommandSpec

export const dd = {
  name: "dd",
  description: "copy an image like qemu-img dd: bs=N count=N skip=N if=IN of=OUT",
  flags: {
    format,
    targetFormat: { kind: "stringDefault", name: "target-format", alias: "O", description: "raw (default) or qcow2", default: "raw" },
    ...common
  },
  args: { operands: { name: "operand", kind: "many" } }
} as const satisfies CommandSpec

export const resize = {
  name: "resize",
  description: "change the virtual size of an image like qemu-img resize ([+|-]SIZE)",
  flags: {
    format,
    preallocation: { kind: "string", name: "preallocation", description: "off, metadata, falloc or full: how the grown area is allocated" },
    shrink: { kind: "boolean", name: "shrink", description: "allow shrinking (data past the new end is lost)" },
    quiet,
    ...common
  },
  args: { file: { name: "filename", kind: "one" }, size: { name: "size", kind: "one" } }
} as const satisfies CommandSpec

export const amend = {
  name: "amend",
  description: "change image options of an existing image like qemu-img amend",
  flags: {
    format,
    options: { kind: "repeat", name: "options", alias: "o", description: "name=value,… options to change ('help' lists them)" },
    force: { kind: "boolean", name: "force", description: "allow changes QEMU considers dangerous" },
    progress: { kind: "boolean", name: "progress", alias: "p" },
    quiet,
    cache: { kind: "string", name: "cache", alias: "t", description: "accepted for compatibility" },
    ...common
  },
  args: { file: { name: "filename", kind: "optional" } }
} as const satisfies CommandSpec

export const bitmap = {
  name: "bitmap",
  description: "add, remove, clear, enable, disable or merge persistent bitmaps like qemu-img bitmap",
  flags: {
    format,
    add: { kind: "boolean", name: "add", description: "add the bitmap (empty, enabled)" },
    remove: { kind: "boolean", name: "remove", description: "remove the bitmap" },
    clear: { kind: "boolean", name: "clear", description: "clear every bit" },
    enable: { kind: "boolean", name: "enable", description: "track writes" },
    disable: { kind: "boolean", name: "disable", description: "stop tracking writes" },
    merge: { kind: "repeat", name: "merge", description: "SOURCE: merge bitmap SOURCE into the bitmap" },
    granularity: { kind: "repeat", name: "granularity", alias: "g", description: "bytes per bit for --add" },
    sourceFile: { kind: "repeat", name: "source-file", alias: "b", description: "image holding the --merge source" },
    sourceFormat: { kind: "repeat", name: "source-format", alias: "F", description: "format of the -b image" },
    ...common
  },
  args: { file: { name: "filename", kind: "optional" }, bitmap: { name: "bitmap", kind: "optional" } }
} as const satisfies CommandSpec

export const COMMANDS = { info, map, check, compare, create, convert, snapshot, serve, commit, rebase, measure, dd, bench, resize, amend, bitmap } as const

export type CommandName = keyof typeof COMMANDS

/** A parsed command line: the subcommand and its values. */
export type Parsed = { [N in CommandName]: { readonly command: N; readonly values: Values<(typeof COMMANDS)[N]> } }[CommandName]

export const ROOT_DESCRIPTION = "QCOW2 disk image tool (qemu-img / qemu-io compatible subset); `qcow2 io` is qemu-io (`qcow2 io --help`)"

export const VERSION = "0.1.0"

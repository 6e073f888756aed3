/** Options and results of the Promise API (plain data, no Effect types). */
import type { BlockStatus, CheckResult, ImageFormat, ImageInfo, MapEntry } from "@qcow2/image"

export type { BlockStatus, CheckResult, ImageFormat, ImageInfo, MapEntry }

/** Options of {@link open} (qemu-img's `-f`, `-U`/read-only and `--object secret`). */
export interface OpenOptions {
  readonly readOnly?: boolean
  readonly format?: ImageFormat
  readonly passphrase?: string | Uint8Array
  readonly openBacking?: boolean
}

/** `qemu-img resize` options. */
export interface ResizeOptions {
  readonly shrink?: boolean
  readonly preallocation?: "off" | "metadata" | "falloc" | "full"
}

/** The LUKS options of `qemu-img create` (`-o cipher-alg=…` and the rest, camelCased). */
export interface LuksOptions {
  readonly passphrase: string | Uint8Array
  /** e.g. "aes-256" (default), "aes-128". */
  readonly cipherAlg?: string
  /** e.g. "xts" (default), "cbc". */
  readonly cipherMode?: string
  /** e.g. "plain64" (default), "essiv". */
  readonly ivgenAlg?: string
  readonly ivgenHashAlg?: string
  /** PBKDF2 hash, e.g. "sha256" (default). */
  readonly hashAlg?: string
  /** Milliseconds of PBKDF2 work per key slot (`iter-time`, default 2000). */
  readonly iterTime?: number
  /** Fixed PBKDF2 iteration counts instead of timing them (reproducible output, fast tests). */
  readonly slotIterations?: number
  readonly masterKeyIterations?: number
}

/** `qemu-img create -f qcow2 -o …`. */
export interface Qcow2CreateOptions {
  readonly format?: "qcow2"
  /** Virtual size in bytes (rounded up to 512); defaults to the backing file's. */
  readonly size?: number
  readonly clusterSize?: number
  readonly compat?: "0.10" | "1.1"
  readonly refcountBits?: number
  readonly lazyRefcounts?: boolean
  readonly extendedL2?: boolean
  readonly compressionType?: "zlib" | "zstd"
  /** Backing file, relative to the new image's directory. */
  readonly backingFile?: string
  readonly backingFormat?: "qcow2" | "raw" | "luks"
  readonly dataFile?: string
  readonly dataFileRaw?: boolean
  readonly preallocation?: "off" | "metadata" | "falloc" | "full"
  /** Encryption (`encrypt.format` = "luks" unless given; "aes" is QEMU's legacy, insecure cipher). */
  readonly encrypt?: LuksOptions & { readonly format?: "luks" | "aes" }
}

/** `qemu-img create -f raw`. */
export interface RawCreateOptions {
  readonly format: "raw"
  readonly size: number
  readonly preallocation?: "off" | "falloc" | "full"
}

/** `qemu-img create -f luks`: a raw LUKS1 volume. */
export interface LuksCreateOptions extends LuksOptions {
  readonly format: "luks"
  readonly size: number
  readonly preallocation?: "off" | "falloc" | "full"
}

/** What `create` makes: a qcow2 image (default), a raw file (`format: "raw"`) or a raw LUKS volume (`format: "luks"`). */
export type CreateOptions = Qcow2CreateOptions | RawCreateOptions | LuksCreateOptions

/** How far a conversion is, reported after every chunk. */
export interface ConvertProgress {
  readonly bytesDone: number
  readonly bytesTotal: number
}

/** Options of {@link convert}: qemu-img convert's flags, named. */
export interface ConvertOptions {
  /** Source format (`-f`); probed when absent. */
  readonly format?: ImageFormat
  /** Passphrase of an encrypted source. */
  readonly passphrase?: string | Uint8Array
  /** Target format (`-O`); "raw" by default, as qemu-img. */
  readonly outFormat?: "qcow2" | "raw"
  /** Compress the qcow2 target (`-c`). */
  readonly compress?: boolean
  /** The target's `-o` options, camelCased (clusterSize, compressionType, encrypt, …). */
  readonly targetOptions?: Omit<Qcow2CreateOptions, "format" | "size" | "backingFile" | "backingFormat">
  /** Zero runs at least this long are left unwritten in a raw target (`-S`, default 4096). */
  readonly sparseSize?: number
  /** Requests in flight (`-m`, default 8). */
  readonly parallel?: number
  /** Called after each chunk with the bytes done so far. */
  readonly onProgress?: (progress: ConvertProgress) => void
  /** Aborting stops the copy, closes every file, and rejects with AbortError. */
  readonly signal?: AbortSignal
}


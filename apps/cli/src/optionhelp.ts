/**
 * `-o help` / `-o ?` of qemu-img create and amend: the option lists
 * qemu-img 7.2 prints for qcow2 and raw, with its wording and layout
 * (qemu_opts_print_help: sorted by name, `  name=<type>` padded to 22
 * columns, then ` - description`).
 */
import { splitOptionList } from "./createopts.js"

type HelpType = "str" | "size" | "num" | "bool (on/off)"

const DESCRIPTIONS: Readonly<Record<string, readonly [HelpType, string]>> = {
  backing_file: ["str", "File name of a base image"],
  backing_fmt: ["str", "Image format of the base image"],
  cluster_size: ["size", "qcow2 cluster size"],
  compat: ["str", "Compatibility level (v2 [0.10] or v3 [1.1])"],
  compression_type: ["str", "Compression method used for image cluster compression"],
  data_file: ["str", "File name of an external data file"],
  data_file_raw: ["bool (on/off)", "The external data file must stay valid as a raw image"],
  "encrypt.cipher-alg": ["str", "Name of encryption cipher algorithm"],
  "encrypt.cipher-mode": ["str", "Name of encryption cipher mode"],
  "encrypt.format": ["str", "Encrypt the image, format choices: 'aes', 'luks'"],
  "encrypt.hash-alg": ["str", "Name of encryption hash algorithm"],
  "encrypt.iter-time": ["num", "Time to spend in PBKDF in milliseconds"],
  "encrypt.ivgen-alg": ["str", "Name of IV generator algorithm"],
  "encrypt.ivgen-hash-alg": ["str", "Name of IV generator hash algorithm"],
  "encrypt.key-secret": ["str", "ID of secret providing qcow AES key or LUKS passphrase"],
  "encrypt.keyslot": ["num", "Select a single keyslot to modify explicitly"],
  "encrypt.new-secret": ["str", "New secret to set in the matching keyslots. Empty string to erase"],
  "encrypt.old-secret": ["str", "Select all keyslots that match this password"],
  "encrypt.state": ["str", "Select new state of affected keyslots (active/inactive)"],
  encryption: ["bool (on/off)", "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"],
  extended_l2: ["bool (on/off)", "Extended L2 tables"],
  extent_size_hint: ["size", "Extent size hint for the image file, 0 to disable"],
  lazy_refcounts: ["bool (on/off)", "Postpone refcount updates"],
  nocow: ["bool (on/off)", "Turn off copy-on-write (valid only on btrfs)"],
  preallocation: ["str", "Preallocation mode (allowed values: off, metadata, falloc, full)"],
  refcount_bits: ["num", "Width of a reference count entry in bits"],
  size: ["size", "Virtual disk size"],
  "cipher-alg": ["str", "Name of encryption cipher algorithm"],
  "cipher-mode": ["str", "Name of encryption cipher mode"],
  "hash-alg": ["str", "Name of encryption hash algorithm"],
  "iter-time": ["num", "Time to spend in PBKDF in milliseconds"],
  "ivgen-alg": ["str", "Name of IV generator algorithm"],
  "ivgen-hash-alg": ["str", "Name of IV generator hash algorithm"],
  "key-secret": ["str", "ID of the secret that provides the keyslot passphrase"],
  keyslot: ["num", "Select a single keyslot to modify explicitly"],
  "new-secret": ["str", "New secret to set in the matching keyslots. Empty string to erase"],
  "old-secret": ["str", "Select all keyslots that match this password"],
  state: ["str", "Select new state of affected keyslots (active/inactive)"]
}

/** The file protocol's preallocation: no "metadata". */
const FILE_PREALLOCATION: readonly [HelpType, string] = ["str", "Preallocation mode (allowed values: off, falloc, full)"]

const QCOW2_CREATE = [
  "backing_file",
  "backing_fmt",
  "cluster_size",
  "compat",
  "compression_type",
  "data_file",
  "data_file_raw",
  "encrypt.cipher-alg",
  "encrypt.cipher-mode",
  "encrypt.format",
  "encrypt.hash-alg",
  "encrypt.iter-time",
  "encrypt.ivgen-alg",
  "encrypt.ivgen-hash-alg",
  "encrypt.key-secret",
  "encryption",
  "extended_l2",
  "lazy_refcounts",
  "preallocation",
  "refcount_bits",
  "size"
]

const LUKS_CREATE = ["cipher-alg", "cipher-mode", "hash-alg", "iter-time", "ivgen-alg", "ivgen-hash-alg", "key-secret", "size"]

const FILE_PROTOCOL = ["extent_size_hint", "nocow", "preallocation", "size"]

/** qcow2's amend_opts. */
export const QCOW2_AMEND_OPTIONS: ReadonlyArray<string> = [
  "backing_file",
  "backing_fmt",
  "compat",
  "data_file",
  "data_file_raw",
  "encrypt.iter-time",
  "encrypt.keyslot",
  "encrypt.new-secret",
  "encrypt.old-secret",
  "encrypt.state",
  "lazy_refcounts",
  "refcount_bits",
  "size"
]

/** The luks driver's amend_opts (block/crypto.c): key-slot options only. */
export const LUKS_AMEND_OPTIONS: ReadonlyArray<string> = ["iter-time", "keyslot", "new-secret", "old-secret", "state"]

/** The luks driver's creation options: amend calls them "only supported for image creation". */
export const LUKS_CREATE_OPTIONS: ReadonlyArray<string> = LUKS_CREATE

const line = (name: string, [type, description]: readonly [HelpType, string]): string => `  ${`${name}=<${type}>`.padEnd(22)} - ${description}\n`

/**
 * The first -o argument qemu-img refuses as a list ("Invalid option
 * list: …"): empty, starting with a comma, or ending in an odd number of
 * commas (qemu-img.c is_valid_option_list).
 */
export const invalidOptionList = (lists: ReadonlyArray<string>): string | undefined =>
  lists.find((list) => {
    if (list === "" || list.startsWith(",")) return true
    const trailing = list.length - list.replace(/,+$/, "").length
    return trailing % 2 === 1
  })

/** Whether an option list asks for help (an item "help" or "?"), as qemu-img's has_help_option. */
export const asksForHelp = (lists: ReadonlyArray<string>): boolean =>
  lists.some((list) => splitOptionList(list).some(([name, value]) => value === "on" && (name === "help" || name === "?")))

/**
 * `qemu-img create -f FMT -o help [FILE]`: the driver's options, or with a
 * file name the driver's merged with the file protocol's.
 */
export const createHelp = (format: "qcow2" | "raw" | "luks", withFile: boolean): string => {
  const driver = format === "qcow2" ? QCOW2_CREATE : format === "luks" ? LUKS_CREATE : ["size"]
  if (!withFile) {
    return `Supported ${format} options:\n${driver.map((n) => line(n, DESCRIPTIONS[n]!)).join("")}\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n`
  }
  const names = [...new Set([...driver, ...FILE_PROTOCOL])].sort()
  const describe = (n: string) => (n === "preallocation" && format !== "qcow2" ? FILE_PREALLOCATION : DESCRIPTIONS[n]!)
  return `Supported options:\n${names.map((n) => line(n, describe(n))).join("")}`
}

/** The format drivers of QEMU 7.2's qemu-img (`qemu-img --help`, "Supported formats") that cannot create images. */
const QEMU_NO_CREATE = new Set(["blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read", "dmg", "null-aio", "null-co", "preallocate", "quorum", "snapshot-access", "throttle", "vvfat"])

/** Every format driver of QEMU 7.2's qemu-img (`qemu-img --help`, "Supported formats"). */
const QEMU_FORMATS = new Set([
  ...QEMU_NO_CREATE,
  ..."file ftp ftps gluster host_cdrom host_device http https iscsi iser luks nbd nfs nvme parallels qcow qcow2 qed raw rbd replication ssh vdi vhdx vmdk vpc".split(" ")
])

/**
 * What qemu-img says when asked to create an image of `format`, which this
 * toolkit cannot create: QEMU's words for its drivers without creation
 * (bdrv_img_create, print_block_option_help), else an unknown format.
 */
export const cannotCreate = (format: string): string =>
  QEMU_NO_CREATE.has(format) ? `Format driver '${format}' does not support image creation` : `Unknown file format '${format}'`

/** What `qemu-img amend -f FORMAT -o help` says for a format other than qcow2 and luks (print_amend_option_help). */
export const cannotAmend = (format: string): string =>
  QEMU_FORMATS.has(format) ? `Format driver '${format}' does not support option amendment` : `Unknown file format '${format}'`

/**
 * qemu-img convert's checks of its -o lists and file count, after those
 * of its flags (img_convert): an invalid list; `-o help`, which lists the
 * target format's options (with the protocol's when an output file is
 * named) and needs no file; too few files; a target format this toolkit
 * cannot create. "go" when none applies.
 */
export const convertOptionCheck = (
  lists: ReadonlyArray<string>,
  target: string,
  files: number,
  skipCreate = false
): { readonly kind: "go"; readonly target: "raw" | "qcow2" } | { readonly kind: "help"; readonly text: string } | { readonly kind: "error"; readonly message: string } => {
  const badList = invalidOptionList(lists)
  if (badList !== undefined) return { kind: "error", message: `Invalid option list: ${badList}` }
  const known = target === "raw" || target === "qcow2" ? target : undefined
  if (asksForHelp(lists)) return known !== undefined ? { kind: "help", text: createHelp(known, files >= 2) } : { kind: "error", message: cannotCreate(target) }
  // qemu-img convert -n: options for a target it does not create are refused.
  if (skipCreate && lists.length > 0) return { kind: "error", message: "-o has no effect when skipping image creation" }
  if (files < 2) return { kind: "error", message: "Must specify image file name" }
  return known !== undefined ? { kind: "go", target: known } : { kind: "error", message: cannotCreate(target) }
}

/** `qemu-img amend -o help` for qcow2 or luks. */
export const amendHelp = (format: "qcow2" | "luks" = "qcow2"): string =>
  `Amend options for '${format}':\n${(format === "luks" ? LUKS_AMEND_OPTIONS : QCOW2_AMEND_OPTIONS).map((n) => line(n, DESCRIPTIONS[n]!)).join("")}`

/**
 * Constants of the NBD protocol, named and numbered as in the protocol
 * document (NetworkBlockDevice/nbd, doc/proto.md, "Values"). Only the
 * fixed newstyle handshake is spoken here; oldstyle is not.
 */

/** "NBDMAGIC": first 8 bytes the server sends (proto.md "Newstyle negotiation"). */
export const NBDMAGIC = 0x4e42444d41474943n
/** "IHAVEOPT": second magic of the greeting, and the prefix of every client option. */
export const IHAVEOPT = 0x49484156454f5054n
/** Second magic of an oldstyle greeting ("cliserv_magic"), which this toolkit does not speak. */
export const OLDSTYLE_MAGIC = 0x00420281861253n
/** Magic of an option reply (fixed newstyle). */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n
/** Magic of a transmission request. */
export const REQUEST_MAGIC = 0x25609513
/** Magic of a simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698
/** Magic of a structured reply chunk. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef

/** Handshake flags (server, 16 bits). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0
/** The server can leave out the 124 zero bytes after an NBD_OPT_EXPORT_NAME reply (NBD_FLAG_NO_ZEROES). */
export const FLAG_NO_ZEROES = 1 << 1

/** Client flags (32 bits); any other bit makes the server drop the connection. */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0
/** The client asks for those zero bytes to be left out (NBD_FLAG_C_NO_ZEROES). */
export const FLAG_C_NO_ZEROES = 1 << 1

/** Transmission flags (16 bits), sent with the export's size. */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11
} as const

/**
 * Option types (client, during option haggling). The meta context options
 * are 9 and 10 as in the current document and in QEMU and libnbd (early
 * drafts of the extension numbered them 10 and 11).
 */
export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10
} as const

/** Option reply types; errors have bit 31 set. */
export const Reply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009
} as const

/** Information types of NBD_REP_INFO (INFO extension, for NBD_OPT_INFO / NBD_OPT_GO). */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3
} as const

/** Request types (transmission phase). */
export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7
} as const

/** Command flags (16 bits). */
export const CommandFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4
} as const

/** Structured reply chunk flags and types; error types have bit 15 set. */
export const REPLY_FLAG_DONE = 1 << 0
/** Structured reply chunk types (NBD_REPLY_TYPE_*). */
export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002
} as const

/** Status flags of the `base:allocation` metadata context. */
export const STATE_HOLE = 1 << 0
/** The extent reads as zeros (NBD_STATE_ZERO). */
export const STATE_ZERO = 1 << 1

/** Error values of a reply (proto.md "Error values"): the common Linux errno numbers. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108
} as const
export type Errno = (typeof Errno)[keyof typeof Errno]

/** Metadata contexts this server offers (proto.md "Metadata querying"; QEMU's docs/interop/nbd.txt). */
export const BASE_ALLOCATION = "base:allocation"
/** QEMU's context: in which layer of the backing chain each extent is allocated. */
export const QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth"

/** Longest string (export name, description, query) the protocol allows. */
export const MAX_STRING = 4096

/** Largest read or write payload the server accepts and advertises (NBD_INFO_BLOCK_SIZE maximum; QEMU's NBD_MAX_BUFFER_SIZE). */
export const MAX_PAYLOAD = 32 * 1024 * 1024

/** Largest option data the server buffers; a longer option is skipped and answered NBD_REP_ERR_TOO_BIG. */
export const MAX_OPTION_DATA = 64 * 1024

/** The 124 zero bytes that end an NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_PADDING = 124

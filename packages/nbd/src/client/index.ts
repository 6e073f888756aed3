/**
 * The NBD client: an NBD server's export as a `BlockStorageShape`, so
 * `@qcow2/image` opens it as it opens a file (QEMU's nbd protocol driver).
 * Portable: it runs over any `Transport`; `@qcow2/nbd/node` connects
 * TCP and Unix sockets and provides the `StorageOpener`.
 */
export { displayNameOf, isNbdFilename, NBD_DEFAULT_PORT, nbdNameOf, nbdTargetFromOptions, parseNbdFilename, parseNbdName, type NbdServerAddress, type NbdTarget, type NbdTargetResult } from "./address.js"
export { MAX_EXTENTS, MAX_IN_FLIGHT, type Extent, type NbdConnection } from "./connection.js"
export { NbdProtocolError, type NbdProtocolErrorReason } from "./errors.js"
export { MAX_OPTION_REPLY, type Negotiated } from "./handshake.js"
export { openOverTransport, type NbdOpenOptions } from "./open.js"
export type { NbdBlockStorage } from "./storage.js"

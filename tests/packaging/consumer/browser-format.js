// A browser page's use of @qcow2/format alone: read an image's first
// cluster (e.g. from a File the user picked) and describe its header.
import { decodeImageHeader } from "@qcow2/format"

export function describeImage(firstCluster) {
  const { header, backingFile } = decodeImageHeader(firstCluster)
  return { version: header.version, virtualSize: header.size, clusterSize: 2 ** header.clusterBits, backingFile: backingFile ?? null }
}

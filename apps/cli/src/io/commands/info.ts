import { Effect } from "effect"
import { IncompatibleFeature } from "@qcow2/format"
import { NULL_CO_NAME, type Image } from "@qcow2/image"
import { qcow2SpecificFor } from "../../commands/info.js"
import { strerror } from "../../errors.js"
import { print } from "../../output.js"
import { dumpHuman } from "../../text/qjson.js"
import { cvtstr } from "../../text/sizes.js"
import type { IoCommand } from "../command.js"

/**
 * qcow2's vm_state_offset: the guest offset where VM state would start,
 * past the range the L1 table maps (virtual size rounded up to what one L2
 * table maps). An L2 table is one cluster of 8-byte entries, 16-byte ones
 * with extended L2 (qcow2.txt "Cluster mapping", "Extended L2 Entries").
 */
export const vmStateOffset = (image: Image): number => {
  const header = image.header?.header
  if (image.format !== "qcow2" || header === undefined) return 0
  const extendedL2 = (header.incompatibleFeatures & IncompatibleFeature.ExtendedL2) !== 0n
  const l2EntryBytes = extendedL2 ? 16 : 8
  const bytesPerL2Table = image.clusterSize * (image.clusterSize / l2EntryBytes)
  return Math.ceil(header.size / bytesPerL2Table) * bytesPerL2Table
}

/** `info`: format, cluster size, vm state offset and qemu-img info's format-specific block. */
export const infoCommand: IoCommand = {
  name: "info",
  needsFile: true,
  alias: "i",
  argmin: 0,
  argmax: 0,
  optstring: "",
  oneline: "prints information about the current file",
  run: (ctx) =>
    Effect.gen(function* () {
      const image = ctx.image
      if (image.location === NULL_CO_NAME) {
        // null-co is a protocol driver: its node prints its format and its protocol name, raw over it
        // its own, then bdrv_get_info fails (ENOTSUP) with nothing printed.
        print(image.format === "null-co" ? "format name: null-co\nformat name: null-co\n" : "format name: raw\n")
        return false
      }
      const filter = ctx.session.filterDriver
      if (filter === "quorum") {
        // The quorum driver answers no get_info: its name, then the command fails with nothing printed.
        print("format name: quorum\n")
        return false
      }
      const clusterSize = image.format === "qcow2" ? image.clusterSize : 0
      // A filter node (compress) names itself; the sizes are those of the image below it, and it has no format-specific data.
      let text = `format name: ${filter ?? image.format}\ncluster size: ${cvtstr(clusterSize)}\nvm state offset: ${cvtstr(vmStateOffset(image))}\n`
      if (image.format === "qcow2" && filter === undefined) {
        const specific = yield* Effect.result(qcow2SpecificFor(image))
        if (specific._tag === "Failure") {
          print(`info failed: ${strerror(specific.failure)}\n`)
          return false
        }
        if (specific.success !== undefined) text += "Format specific information:\n" + dumpHuman(specific.success, 1)
      }
      print(text)
      return true
    })
}

// Create a qcow2 image, write and read it back, look at it, and convert it
// to raw. Run: node examples/quickstart.mjs [DIRECTORY]   (after `pnpm build`)
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { convert, create, open, ImageError } from "@qcow2/node"

const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), "qcow2-example-"))
const disk = join(dir, "disk.qcow2")

await create(disk, { size: 64 * 2 ** 20 }) // qemu-img create -f qcow2 disk.qcow2 64M

const img = await open(disk)
try {
  await img.write(1 << 20, new TextEncoder().encode("hello, qcow2"))
  const got = await img.read(1 << 20, 12)
  console.log(new TextDecoder().decode(got)) // hello, qcow2
  const info = await img.info() // what `qemu-img info --output=json` prints
  console.log(info.format, info["virtual-size"], info["cluster-size"]) // qcow2 67108864 65536
  const check = await img.check() // qemu-img check's fields
  console.log(`corruptions ${check.corruptions}, leaks ${check.leaks}`)
} finally {
  await img.close()
}

await convert(disk, join(dir, "disk.raw"), {
  outFormat: "raw",
  onProgress: ({ bytesDone, bytesTotal }) => bytesDone === bytesTotal && console.log("converted")
})

try {
  await open(join(dir, "disk.raw"), { format: "qcow2" })
} catch (e) {
  if (e instanceof ImageError) console.log(`refused: ${e.reason}`) // refused: NotQcow2
  else throw e
}

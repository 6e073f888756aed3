import { describe, expect, it } from "vitest"
import { ImageError, type ImageErrorReason } from "@qcow2/image"
import { strerror } from "../src/errors.js"

describe("strerror of an image error (what qemu-io prints after 'read failed: ')", () => {
  const error = (reason: ImageErrorReason, errno?: string) => new ImageError({ reason, message: "m", ...(errno !== undefined ? { errno } : {}) })
  it("maps each reason to the errno QEMU returns", () => {
    const expected: Record<ImageErrorReason, string> = {
      NotQcow2: "Input/output error",
      Corrupt: "Input/output error",
      Unsupported: "Operation not supported",
      ReadOnly: "Permission denied",
      InvalidArgument: "Invalid argument",
      BackingChain: "Input/output error",
      Decompression: "Input/output error",
      Compression: "Input/output error",
      Encryption: "Input/output error",
      RefcountOverflow: "Invalid argument",
      NoSpace: "No space left on device",
      Storage: "Input/output error",
      Locked: "Resource temporarily unavailable"
    }
    for (const [reason, text] of Object.entries(expected)) expect(strerror(error(reason as ImageErrorReason)), reason).toBe(text)
  })
  it("prefers the error's own errno, and ignores one it does not know", () => {
    expect(strerror(error("Storage", "EPERM"))).toBe("Operation not permitted")
    expect(strerror(error("Corrupt", "EINVAL"))).toBe("Invalid argument")
    expect(strerror(error("NoSpace", "EWHATEVER"))).toBe("No space left on device")
    expect(strerror(error("Storage", "constructor"))).toBe("Input/output error")
  })
})

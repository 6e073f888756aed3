/**
 * NBD names as QEMU 7.2's nbd driver parses them (block/nbd.c): the legacy
 * `nbd:` syntax, the URIs, the driver's options; the name QEMU shows for
 * each; and QEMU's messages for bad ones (checked against qemu-img).
 */
import { describe, expect, it } from "vitest"
import { displayNameOf, nbdNameOf, nbdTargetFromOptions, parseNbdName, type NbdTarget } from "../src/client/index.js"

const target = (name: string): NbdTarget => {
  const parsed = parseNbdName(name)
  if (parsed === undefined || !parsed.ok) throw new Error(`${name}: ${parsed === undefined ? "not nbd" : parsed.message}`)
  return parsed.target
}
const message = (name: string): string | undefined => {
  const parsed = parseNbdName(name)
  return parsed !== undefined && !parsed.ok ? parsed.message : undefined
}

describe("NBD names", () => {
  it("parses each syntax and shows it as QEMU does", () => {
    const cases: Array<[string, string]> = [
      ["nbd:unix:/tmp/s.sock", "nbd+unix://?socket=/tmp/s.sock"],
      ["nbd:unix:/tmp/s.sock:exportname=disk", "nbd+unix:///disk?socket=/tmp/s.sock"],
      ["nbd:localhost:10809", "nbd://localhost:10809"],
      ["nbd:127.0.0.1:2000:exportname=a", "nbd://127.0.0.1:2000/a"],
      ["nbd://127.0.0.1/a", "nbd://127.0.0.1:10809/a"],
      ["nbd+tcp://127.0.0.1:1/", "nbd://127.0.0.1:1"],
      ["nbd+unix:///?socket=/tmp/s.sock", "nbd+unix://?socket=/tmp/s.sock"],
      ["nbd+unix:///x%20y?socket=/tmp/s.sock", "nbd+unix:///x y?socket=/tmp/s.sock"],
      ['json:{"driver":"nbd","server":{"type":"unix","path":"/tmp/s.sock"},"export":"e"}', "nbd+unix:///e?socket=/tmp/s.sock"],
      ['json:{"driver":"nbd","server":{"type":"inet","host":"::1","port":"99"}}', "nbd://::1:99"]
    ]
    for (const [name, shown] of cases) expect(displayNameOf(target(name)), name).toBe(shown)
    expect(parseNbdName("/tmp/disk.qcow2")).toBeUndefined()
    expect(parseNbdName('json:{"driver":"qcow2","file":{"filename":"x"}}')).toBeUndefined()
  })

  it("gives qemu-img's messages for bad names", () => {
    expect(message("nbd:foo")).toBe("error parsing address 'foo'")
    expect(message("nbd:")).toBe("NBD server address missing")
    expect(message("nbd+unix://")).toBe("No valid URL specified")
    expect(message("nbd+unix:///?socket=/s&x=1")).toBe("No valid URL specified")
    expect(message("nbd://host/e?x=1")).toBe("No valid URL specified")
    // Not one of the nbd driver's protocols (QEMU: "Unknown protocol 'nbd+rdma'").
    expect(message("nbd+rdma://host/")).toBeUndefined()
  })

  it("takes the driver's options, old and new, and QEMU's x-dirty-bitmap", () => {
    const options = (entries: Record<string, string>) => nbdTargetFromOptions(new Map(Object.entries(entries)))
    expect(options({ "server.type": "unix", "server.path": "/s", export: "e", "x-dirty-bitmap": "qemu:allocation-depth" })).toEqual({
      ok: true,
      target: { server: { type: "unix", path: "/s" }, exportName: "e", statusContext: "qemu:allocation-depth" }
    })
    expect(options({ host: "h", port: "5" })).toEqual({ ok: true, target: { server: { type: "inet", host: "h", port: 5 }, exportName: "" } })
    expect(options({ path: "/s", "server.type": "unix" })).toEqual({ ok: false, message: "Cannot use 'server' and path/host/port at the same time" })
    expect(options({ "server.type": "unix" })).toEqual({ ok: false, message: "Parameter 'path' is missing" })
    expect(options({ "server.type": "unix", "server.path": "/s", bogus: "1" })).toEqual({ ok: false, message: "Block protocol 'nbd' doesn't support the option 'bogus'" })
  })

  it("names every target so that it parses back to the same target", () => {
    const targets: NbdTarget[] = [
      { server: { type: "unix", path: "/tmp/a b.sock" }, exportName: "" },
      { server: { type: "unix", path: "/s" }, exportName: "with:colon" },
      { server: { type: "inet", host: "::1", port: 10809 }, exportName: "x" },
      { server: { type: "inet", host: "localhost", port: 1 }, exportName: "", statusContext: "qemu:allocation-depth" }
    ]
    for (const t of targets) expect(target(nbdNameOf(t))).toEqual(t)
  })
})

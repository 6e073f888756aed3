import { blockStorageConformance } from "@qcow2/storage/testing"
import { Effect } from "effect"
import { afterAll, beforeAll } from "vitest"
import { openHttp, type HttpStorageOptions } from "../src/index.js"
import { TestServer } from "./server.js"

/** A well-behaved server, and one that refuses HEAD and sends no validators or Accept-Ranges. */
const plain = new TestServer()
const quirky = new TestServer()

beforeAll(async () => {
  await plain.start()
  await quirky.start()
  quirky.headStatus = 405
  quirky.acceptRanges = undefined
  quirky.sendEtag = false
  quirky.sendLastModified = false
})
afterAll(async () => {
  await plain.stop()
  await quirky.stop()
})

let files = 0

const suite = (name: string, server: TestServer, options: HttpStorageOptions) => {
  const open = (content: Uint8Array) =>
    Effect.suspend(() => openHttp(server.put(`/conformance/${++files}.img`, content), options))
  blockStorageConformance(name, () => open(new Uint8Array(0)), { readOnly: true, makeWithContent: open })
}

suite("http, default options", plain, {})
suite("http, 4 KiB blocks, 32 KiB cache, 16 KiB requests", plain, {
  blockSize: 4096,
  cacheBytes: 32 * 1024,
  maxRequestBytes: 16 * 1024
})
suite("http, HEAD refused, no validators, no cache", quirky, { blockSize: 512, cacheBytes: 0 })

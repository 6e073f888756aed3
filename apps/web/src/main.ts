import { Effect } from "effect"
import { createImage, type CreateOptions, type Image } from "@qcow2/image"
import { deleteIdbStore, formatIdbName, listIdbStores, makeIdbStorageOpener, renameIdbStore, storageUsage } from "@qcow2/storage-idb"
import { runCommand, parseSize } from "./console.js"
import { byId, el, humanSize, messageOf } from "./dom.js"
import { hexDump } from "./hex.js"
import { renderInfo } from "./info.js"
import { COLOURS, countCategories, drawGuestMap, drawHostLayout, MAX_CELLS, scanClusters, type Category } from "./map.js"
import { kindOf, PICKED } from "./opener.js"
import { Session } from "./session.js"

/** The app's IndexedDB database: its library of images. */
const DATABASE = "qcow2-web"

const session = new Session()
const status = (text: string) => (byId("status").textContent = text)
const image = (): Image => {
  if (session.image === undefined) throw new Error("no image is open")
  return session.image
}

/** Runs a UI action, showing its failure in the status line instead of losing it. */
const action = (run: () => Promise<void>) => () => {
  run().catch((e) => status(`Error: ${messageOf(e)}`))
}

// ---- opening, behind the policy ----------------------------------------------

/**
 * Shows the chain `name` would open; opens it when every name is allowed,
 * otherwise offers to approve the blocked one.
 */
const openWithPlan = async (name: string, readOnly: boolean): Promise<void> => {
  session.policy.approve(name)
  const plan = await session.plan(name)
  const box = byId("plan")
  box.replaceChildren(
    el("h3", {}, "Opening"),
    el("ol", {}, ...plan.map((s) => el("li", { class: s.allowed ? "" : "blocked" }, `${s.name} ${s.allowed ? `(${s.format})` : "— blocked: not the image's origin or library; approve to open"}`)))
  )
  const blocked = plan.find((s) => !s.allowed)
  if (blocked !== undefined) {
    const approve = el("button", { id: "approve" }, `Allow ${blocked.name}`)
    approve.addEventListener("click", action(() => {
      session.policy.approve(blocked.name)
      return openWithPlan(name, readOnly)
    }))
    box.append(approve)
    status(`Not opened: ${name} names ${blocked.name}, which needs your approval.`)
    return
  }
  const opened = await session.open(name, { readOnly })
  status(`Open: ${name} (${opened.format}, ${humanSize(opened.virtualSize)}${opened.readOnly ? ", read-only" : ""})`)
  await showImage()
}

const showImage = async () => {
  const img = image()
  byId("info").replaceChildren(await session.run(renderInfo(img)))
  showHttpStats()
  byId("check-result").textContent = ""
  byId("hex").textContent = ""
  byId("console-output").textContent = ""
  await drawMap()
}

const showHttpStats = () => {
  const stores = session.httpStores
  if (stores.length === 0) return void (byId("http-stats").textContent = "")
  const total = stores.reduce((t, s) => ({ requests: t.requests + s.stats().requests, bytes: t.bytes + s.stats().bytesFetched }), { requests: 0, bytes: 0 })
  byId("http-stats").textContent = `HTTP: ${total.requests} requests, ${total.bytes} bytes fetched (${stores.length} remote files)`
}

// ---- map, hex, console, check ------------------------------------------------------

const drawMap = async () => {
  const img = image()
  const start = Math.floor((parseSize(byId<HTMLInputElement>("map-start").value) ?? 0) / img.clusterSize) * img.clusterSize
  const cell = Number(byId<HTMLSelectElement>("map-cell").value)
  const map = await session.run(scanClusters(img, Math.min(start, img.virtualSize), MAX_CELLS))
  drawGuestMap(byId("guest-map"), map, cell)
  const counts = countCategories(map)
  byId("legend").replaceChildren(
    ...(Object.keys(counts) as Category[]).map((c) =>
      el("span", { "data-category": c, style: `border-left: 1em solid ${COLOURS[c]}; padding: 0 1em 0 0.3em` }, `${c}: ${counts[c]}`)
    ),
    `clusters ${start / img.clusterSize}…${start / img.clusterSize + map.categories.length - 1} of ${Math.ceil(img.virtualSize / img.clusterSize)}`
  )
  // The host extent this view's data reaches (the Image API does not expose the file itself).
  const hostEnd = map.hosts.reduce((end, h) => Math.max(end, h + img.clusterSize), img.clusterSize)
  const layout = drawHostLayout(byId("host-map"), map, hostEnd)
  byId("host-summary").textContent = `host file: ${layout.dataClusters} data clusters of this view in ${layout.fragments} contiguous runs`
  byId<HTMLCanvasElement>("guest-map").onclick = (event) => {
    const canvas = event.currentTarget as HTMLCanvasElement
    const columns = Math.max(1, Math.floor(canvas.width / cell))
    const index = Math.floor(event.offsetY / cell) * columns + Math.floor(event.offsetX / cell)
    byId<HTMLInputElement>("hex-offset").value = String(start + index * img.clusterSize)
    void showHex()
  }
}

const showHex = async () => {
  const img = image()
  const offset = parseSize(byId<HTMLInputElement>("hex-offset").value.trim())
  if (offset === undefined || offset >= img.virtualSize) return void (byId("hex").textContent = "offset outside the image")
  const bytes = new Uint8Array(Math.min(512, img.virtualSize - offset))
  await session.run(img.read(offset, bytes))
  byId("hex").textContent = hexDump(offset, bytes)
}

const runConsole = async () => {
  const input = byId<HTMLInputElement>("console-input")
  const out = byId("console-output")
  const line = input.value
  const text = await session.run(runCommand(image(), line))
  out.textContent += `qemu-io> ${line}\n${text}${text === "" ? "" : "\n"}`
  input.value = ""
  showHttpStats()
}

const runCheck = async () => {
  const r = await session.run(image().check())
  byId("check-result").textContent = [
    ...r.messages,
    r.corruptions === 0 && r.leaks === 0 && r.checkErrors === 0 ? "No errors were found on the image." : `${r.corruptions} errors, ${r.leaks} leaked clusters, ${r.checkErrors} check errors`,
    `${r.allocatedClusters}/${r.totalClusters} = ${((100 * r.allocatedClusters) / Math.max(1, r.totalClusters)).toFixed(2)}% allocated, ${r.fragmentedClusters} fragmented, ${r.compressedClusters} compressed clusters`,
    `Image end offset: ${r.imageEndOffset}`
  ].join("\n")
}

// ---- library and creation --------------------------------------------------------

const refreshLibrary = async () => {
  const stores = await Effect.runPromise(listIdbStores(DATABASE))
  const usage = await Effect.runPromise(storageUsage())
  byId("usage").textContent = usage === undefined ? "" : `${humanSize(usage.usage)} used of ${humanSize(usage.quota)}`
  const rows = stores.map((s) => {
    const name = formatIdbName({ database: DATABASE, name: s.name })
    const button = (label: string, run: () => Promise<void>) => {
      const b = el("button", { "data-action": label, "data-name": s.name }, label)
      b.addEventListener("click", action(run))
      return b
    }
    return el(
      "tr",
      { "data-store": s.name },
      el("td", {}, s.name),
      el("td", {}, humanSize(s.size)),
      el("td", {}, button("open", () => openWithPlan(name, false)), button("download", () => download(name, s.name)), button("rename", async () => {
        const to = prompt(`Rename ${s.name} to`, s.name)
        if (to === null || to === s.name) return
        await session.close()
        await Effect.runPromise(renameIdbStore(DATABASE, s.name, to))
        await refreshLibrary()
      }), button("delete", async () => {
        if (!confirm(`Delete ${s.name}?`)) return
        if (session.name === name) await session.close()
        await Effect.runPromise(deleteIdbStore(DATABASE, s.name))
        await refreshLibrary()
      }))
    )
  })
  byId("library").replaceChildren(...rows)
}

/**
 * The stored bytes of a library image as a file download. The open image
 * holds its store exclusively: it is closed (flushed) for the copy and opened again.
 */
const download = async (name: string, fileName: string) => {
  const reopen = session.name === name ? session.image?.readOnly ?? false : undefined
  if (reopen !== undefined) await session.close()
  const bytes = await session.run(
    Effect.scoped(
      Effect.gen(function* () {
        const store = yield* makeIdbStorageOpener().open(name, { readOnly: true })
        const out = new Uint8Array(yield* store.size())
        yield* store.read(0, out)
        return out
      })
    )
  )
  const link = el("a", { href: URL.createObjectURL(new Blob([bytes])), download: fileName.slice(fileName.lastIndexOf("/") + 1) })
  link.click()
  if (reopen !== undefined) await session.open(name, { readOnly: reopen })
}

const createFromForm = async (form: HTMLFormElement) => {
  const f = new FormData(form)
  const text = (k: string) => String(f.get(k) ?? "").trim()
  const name = formatIdbName({ database: DATABASE, name: text("name") })
  const backing = text("backingFile")
  const sizeText = text("size")
  const size = sizeText === "" ? undefined : parseSize(sizeText)
  if (sizeText !== "" && size === undefined) throw new Error(`invalid size ${sizeText}`)
  const passphrase = text("passphrase")
  const options: CreateOptions = {
    ...(size !== undefined ? { size } : {}),
    clusterSize: Number(text("clusterSize")),
    compat: text("compat") as "1.1" | "0.10",
    refcountBits: Number(text("refcountBits")),
    compressionType: text("compressionType") as "zlib" | "zstd",
    preallocation: text("preallocation") as "off" | "metadata",
    lazyRefcounts: f.get("lazyRefcounts") !== null,
    extendedL2: f.get("extendedL2") !== null,
    ...(backing !== "" ? { backingFile: backing, backingFormat: text("backingFormat") as "qcow2" | "raw" } : {}),
    ...(passphrase !== "" ? { encryption: { format: "luks" as const, passphrase: new TextEncoder().encode(passphrase) } } : {})
  }
  // The user named the backing file: that is their approval to open it.
  if (backing !== "") session.policy.approve(kindOf(backing) === "other" ? formatIdbName({ database: DATABASE, name: backing }) : backing)
  session.policy.approve(name)
  await session.close()
  await session.run(Effect.scoped(createImage(name, options)))
  status(`Created ${name}`)
  await refreshLibrary()
  await openWithPlan(name, false)
}

// ---- wiring ----------------------------------------------------------------------

const openPicked = async (files: FileList | File[]) => {
  const list = Array.from(files)
  if (list.length === 0) return
  for (const f of list) {
    session.picked.set(f.name, f)
    session.policy.approve(`${PICKED}${f.name}`)
  }
  // The first picked file is opened; the others are there for its backing chain.
  await openWithPlan(`${PICKED}${list[0]!.name}`, true)
}

byId<HTMLInputElement>("file-input").addEventListener("change", action(async () => openPicked(byId<HTMLInputElement>("file-input").files ?? [])))
const drop = byId("drop")
drop.addEventListener("dragover", (e) => {
  e.preventDefault()
  drop.classList.add("over")
})
drop.addEventListener("dragleave", () => drop.classList.remove("over"))
drop.addEventListener("drop", (e) => {
  e.preventDefault()
  drop.classList.remove("over")
  action(() => openPicked(e.dataTransfer?.files ?? []))()
})
byId("url-form").addEventListener("submit", (e) => {
  e.preventDefault()
  action(() => openWithPlan(byId<HTMLInputElement>("url-input").value.trim(), true))()
})
byId("create-form").addEventListener("submit", (e) => {
  e.preventDefault()
  action(() => createFromForm(e.currentTarget as HTMLFormElement))()
})
byId("check-button").addEventListener("click", action(runCheck))
byId("map-draw").addEventListener("click", action(drawMap))
byId("map-zoom-out").addEventListener("click", action(async () => {
  byId<HTMLInputElement>("map-start").value = "0"
  byId<HTMLSelectElement>("map-cell").value = "2"
  await drawMap()
}))
byId("hex-form").addEventListener("submit", (e) => {
  e.preventDefault()
  action(showHex)()
})
byId("console-form").addEventListener("submit", (e) => {
  e.preventDefault()
  action(runConsole)()
})
byId("download-button").addEventListener("click", action(async () => {
  if (kindOf(session.name) !== "idb") throw new Error("only library images can be downloaded here")
  await download(session.name, session.name.slice(session.name.lastIndexOf("/") + 1))
}))
window.addEventListener("pagehide", () => void session.close())
action(refreshLibrary)()

import { Effect } from "effect"
import { createImage, type CreateOptions, type Image } from "@qcow2/image"
import { deleteIdbStore, formatIdbName, listIdbStores, renameIdbStore, storageUsage } from "@qcow2/storage-idb"
import { runCommand, parseSize } from "./console.js"
import { byId, el, humanSize, messageOf } from "./dom.js"
import { makeExportView } from "./exportView.js"
import { hexDump } from "./hex.js"
import { infoJson, mapJson, renderInfo } from "./info.js"
import { COLOURS, countCategories, drawGuestMap, drawHostLayout, headerRegions, HOST_COLOURS, MAX_CELLS, scanClusters, type Category } from "./map.js"
import { kindOf, PICKED } from "./opener.js"
import { Session } from "./session.js"

/** The app's IndexedDB database: its library of images. */
const DATABASE = "qcow2-web"

const session = new Session()
const status = (text: string, isError = false) => {
  const line = byId("status")
  line.textContent = text
  line.classList.toggle("error", isError)
}
const image = (): Image => {
  if (session.image === undefined) throw new Error("no image is open")
  return session.image
}

/** Runs a UI action, showing its failure in the status line instead of losing it. */
const action = (run: () => Promise<void>) => () => {
  run().catch((e) => status(`Error: ${messageOf(e)}`, true))
}

/** The name an image is shown under (what qemu-img would be given): a picked file by its file name. */
const displayName = (name: string) => (kindOf(name) === "picked" ? name.slice(PICKED.length) : name)

// ---- tabs ------------------------------------------------------------------------

const showTab = (tab: string) => {
  for (const b of Array.from(document.querySelectorAll<HTMLButtonElement>("[data-tab]"))) b.classList.toggle("active", b.dataset.tab === tab)
  for (const s of Array.from(document.querySelectorAll<HTMLElement>("section.tab"))) s.hidden = s.id !== `tab-${tab}`
  if (tab === "map" && session.image !== undefined) action(drawMap)()
}
for (const b of Array.from(document.querySelectorAll<HTMLButtonElement>("[data-tab]"))) b.addEventListener("click", () => showTab(b.dataset.tab!))
byId("host-legend").replaceChildren(
  ...Object.entries(HOST_COLOURS).map(([kind, colour]) =>
    el("span", {}, el("i", { style: `background: ${colour}` }), kind === "other" ? "L2 tables, refcount blocks, free" : kind)
  )
)

// ---- opening, behind the policy ----------------------------------------------

/** Asks for a passphrase in a dialog; undefined when the user cancels. Nothing is stored. */
const askPassphrase = (name: string): Promise<Uint8Array | undefined> =>
  new Promise((resolve) => {
    const dialog = byId<HTMLDialogElement>("passphrase-dialog")
    const input = byId<HTMLInputElement>("passphrase-input")
    byId("passphrase-for").textContent = `${displayName(name)} is encrypted.`
    input.value = ""
    dialog.onclose = () => {
      const text = input.value
      input.value = ""
      resolve(dialog.returnValue === "ok" ? new TextEncoder().encode(text) : undefined)
    }
    dialog.showModal()
  })

/**
 * Shows the chain `name` would open; opens it when every name is allowed,
 * otherwise offers to approve the blocked one. An encrypted image asks for
 * its passphrase.
 */
const openWithPlan = async (name: string, readOnly: boolean): Promise<void> => {
  session.policy.approve(name)
  status(`Opening ${displayName(name)}…`)
  const plan = await session.plan(name)
  const box = byId("plan")
  box.replaceChildren(
    el("h3", {}, "Chain to open"),
    el("ol", {}, ...plan.map((s) => el("li", { class: s.allowed ? "" : "blocked" }, `${displayName(s.name)} ${s.allowed ? `(${s.format}${s.encrypted ? ", encrypted" : ""})` : "— blocked: not the image's origin or library; approve to open"}`)))
  )
  const blocked = plan.find((s) => !s.allowed)
  if (blocked !== undefined) {
    const approve = el("button", { id: "approve", class: "primary" }, `Allow ${blocked.name}`)
    approve.addEventListener("click", action(() => {
      session.policy.approve(blocked.name)
      return openWithPlan(name, readOnly)
    }))
    box.append(approve)
    status(`Not opened: ${displayName(name)} names ${blocked.name}, which needs your approval.`, true)
    return
  }
  const passphrase = plan[0]?.encrypted === true ? await askPassphrase(name) : undefined
  if (plan[0]?.encrypted === true && passphrase === undefined) return void status(`Not opened: ${displayName(name)} needs its passphrase.`, true)
  const opened = await session.open(name, { readOnly, ...(passphrase !== undefined ? { passphrase } : {}) }).catch((e: unknown) => {
    // The image open before was closed: the page no longer shows it.
    byId("image-title").textContent = "No image open"
    byId("info").replaceChildren()
    byId("http-stats").textContent = ""
    throw e
  })
  await showImage()
  // "Open:" once the whole page shows the image (what a user, or a test, may act on next).
  status(`Open: ${name} (${opened.format}, ${humanSize(opened.virtualSize)}${opened.readOnly ? ", read-only" : ""})`)
}

const showImage = async () => {
  const img = image()
  const name = displayName(session.name)
  byId("image-title").textContent = name
  // Set before the awaits below, so that a name typed meanwhile is not overwritten.
  byId<HTMLInputElement>("export-name").value = `${name.slice(name.lastIndexOf("/") + 1).replace(/\.[a-z0-9]+$/i, "")}-export.qcow2`
  byId("info").replaceChildren(await session.run(renderInfo(img)))
  byId("info-json").textContent = await session.run(infoJson(img, name))
  byId("map-json").textContent = await session.run(mapJson(img, name))
  showHttpStats()
  byId("check-result").textContent = ""
  byId("hex").textContent = ""
  byId("console-output").textContent = ""
  for (const row of Array.from(document.querySelectorAll<HTMLElement>("#library tr"))) row.classList.toggle("current", formatIdbName({ database: DATABASE, name: row.dataset.store ?? "" }) === session.name)
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
    ...(Object.keys(counts) as Category[]).map((c) => el("span", { "data-category": c }, el("i", { style: `background: ${COLOURS[c]}` }), `${c}: ${counts[c]}`)),
    el("span", { class: "muted" }, `clusters ${start / img.clusterSize}…${start / img.clusterSize + map.categories.length - 1} of ${Math.ceil(img.virtualSize / img.clusterSize)}`)
  )
  // The host extent this view's data and the header's structures reach (the Image API does not expose the file itself).
  const regions = headerRegions(img)
  const hostEnd = Math.max(
    map.hosts.reduce((end, h) => Math.max(end, h + img.clusterSize), img.clusterSize),
    ...regions.map((r) => r.offset + r.length)
  )
  const layout = drawHostLayout(byId("host-map"), map, regions, hostEnd)
  byId("host-summary").textContent = `${layout.dataClusters} data clusters of this view in ${layout.fragments} contiguous runs`
  byId<HTMLCanvasElement>("guest-map").onclick = (event) => {
    const canvas = event.currentTarget as HTMLCanvasElement
    const columns = Math.max(1, Math.floor(canvas.width / cell))
    const index = Math.floor(event.offsetY / cell) * columns + Math.floor(event.offsetX / cell)
    byId<HTMLInputElement>("hex-offset").value = String(start + index * img.clusterSize)
    showTab("hex")
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
  out.scrollTop = out.scrollHeight
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
  byId("usage").replaceChildren(
    ...(usage === undefined ? [] : [`${humanSize(usage.usage)} used of ${humanSize(usage.quota)} available to this site`, el("meter", { min: "0", max: String(usage.quota), value: String(usage.usage) })])
  )
  const rows = stores.map((s) => {
    const name = formatIdbName({ database: DATABASE, name: s.name })
    const button = (label: string, run: () => Promise<void>) => {
      const b = el("button", { "data-action": label, "data-name": s.name }, label)
      b.addEventListener("click", action(run))
      return b
    }
    return el(
      "tr",
      { "data-store": s.name, class: name === session.name ? "current" : "" },
      el("td", { class: "name" }, s.name),
      el("td", { class: "size" }, humanSize(s.size)),
      el("td", { class: "actions" }, button("open", () => openWithPlan(name, false)), button("download", () => exportView.downloadStored(name, s.name.slice(s.name.lastIndexOf("/") + 1))), button("rename", async () => {
        const to = prompt(`Rename ${s.name} to`, s.name)
        if (to === null || to.trim() === "" || to === s.name) return
        if (session.name === name) await session.close()
        await Effect.runPromise(renameIdbStore(DATABASE, s.name, to.trim()))
        await refreshLibrary()
      }), button("delete", async () => {
        if (!confirm(`Delete ${s.name}? This cannot be undone.`)) return
        if (session.name === name) await session.close()
        await Effect.runPromise(deleteIdbStore(DATABASE, s.name))
        await refreshLibrary()
      }))
    )
  })
  byId("library").replaceChildren(...(rows.length > 0 ? rows : [el("tr", {}, el("td", { class: "muted" }, "No images yet: create one below, or commit an open image from its Export tab."))]))
}

const exportView = makeExportView({ session, database: DATABASE, status, refreshLibrary })

const createFromForm = async (form: HTMLFormElement) => {
  const f = new FormData(form)
  const text = (k: string) => String(f.get(k) ?? "").trim()
  const name = formatIdbName({ database: DATABASE, name: text("name") })
  const backing = text("backingFile")
  const sizeText = text("size")
  const size = sizeText === "" ? undefined : parseSize(sizeText)
  if (sizeText !== "" && size === undefined) throw new Error(`invalid size ${sizeText}`)
  const encryption = text("encryption") as "" | "luks" | "aes"
  // The passphrase is read from the form and cleared at once; it is never stored.
  const passphrase = new TextEncoder().encode(String(f.get("passphrase") ?? ""))
  form.querySelector<HTMLInputElement>('[name="passphrase"]')!.value = ""
  if (encryption !== "" && passphrase.length === 0) throw new Error("an encrypted image needs a passphrase")
  const options: CreateOptions = {
    ...(size !== undefined ? { size } : {}),
    clusterSize: Number(text("clusterSize")),
    compat: text("compat") as "1.1" | "0.10",
    refcountBits: Number(text("refcountBits")),
    compressionType: text("compressionType") as "zlib" | "zstd",
    preallocation: text("preallocation") as "off" | "metadata" | "falloc" | "full",
    lazyRefcounts: f.get("lazyRefcounts") !== null,
    extendedL2: f.get("extendedL2") !== null,
    ...(backing !== "" ? { backingFile: backing, backingFormat: text("backingFormat") as "qcow2" | "raw" } : {}),
    ...(encryption !== "" ? { encryption: { format: encryption, passphrase } } : {})
  }
  // The user named the backing file: that is their approval to open it.
  if (backing !== "") session.policy.approve(kindOf(backing) === "other" ? formatIdbName({ database: DATABASE, name: backing }) : backing)
  session.policy.approve(name)
  await session.close()
  status(`Creating ${name}…`)
  await session.run(Effect.scoped(createImage(name, options)))
  status(`Created ${name}`)
  await refreshLibrary()
  if (encryption !== "") {
    await session.open(name, { readOnly: false, passphrase })
    status(`Open: ${name} (qcow2, ${humanSize(image().virtualSize)}, encrypted)`)
    await showImage()
  } else await openWithPlan(name, false)
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

const submit = (id: string, run: (form: HTMLFormElement) => Promise<void>) =>
  byId(id).addEventListener("submit", (e) => {
    e.preventDefault()
    action(() => run(e.currentTarget as HTMLFormElement))()
  })

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
submit("url-form", () => openWithPlan(byId<HTMLInputElement>("url-input").value.trim(), true))
submit("create-form", createFromForm)
submit("hex-form", showHex)
submit("console-form", runConsole)
submit("export-form", exportView.exportImage)
submit("commit-form", exportView.commitImage)
byId("check-button").addEventListener("click", action(runCheck))
byId("map-draw").addEventListener("click", action(drawMap))
byId("map-zoom-out").addEventListener("click", action(async () => {
  byId<HTMLInputElement>("map-start").value = "0"
  byId<HTMLSelectElement>("map-cell").value = "2"
  await drawMap()
}))
window.addEventListener("pagehide", () => void session.close())
action(refreshLibrary)()

// Deep link: /?url=<image URL> opens that image at once (read-only, behind the policy).
const linked = new URLSearchParams(location.search).get("url")
if (linked !== null && linked !== "") {
  byId<HTMLInputElement>("url-input").value = linked
  action(() => openWithPlan(linked, true))()
}

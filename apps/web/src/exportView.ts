/**
 * The Export tab: export the open image to a file (raw or qcow2, optionally
 * compressed), commit it into a standalone library image, and stream a
 * library image's stored bytes to a file; one job at a time, with a
 * progress bar and Cancel.
 */
import { Effect } from "effect"
import { deleteIdbStore, formatIdbName } from "@qcow2/storage-idb"
import { byId, humanSize, messageOf } from "./dom.js"
import {
  ExportCancelled,
  convertToQcow2,
  copyStore,
  downloadTarget,
  hasSavePicker,
  pickTarget,
  writeRaw,
  type ClusterCompressor,
  type ExportCompression,
  type ExportTarget
} from "./export.js"
import type { Session } from "./session.js"

/** The IndexedDB database of scratch stores (qcow2 exports are built there before they are written out). */
const SCRATCH_DATABASE = "qcow2-web-scratch"

export interface ExportViewOptions {
  readonly session: Session
  /** The library's database. */
  readonly database: string
  readonly status: (text: string, isError?: boolean) => void
  readonly refreshLibrary: () => Promise<void>
  /**
   * Compresses clusters for compressed exports; undefined = a Web Worker
   * pool (`@qcow2/compress/runtime`'s browser build) started per export.
   */
  readonly compressor?: ClusterCompressor
}

/** The progress bar and Cancel button of the running job. */
class Job {
  readonly controller = new AbortController()
  private readonly started = performance.now()
  constructor(readonly label: string, status: (text: string) => void) {
    status(`${label} running…`)
    byId("export-box").hidden = false
    byId<HTMLButtonElement>("export-cancel").disabled = false
    byId<HTMLButtonElement>("export-cancel").onclick = () => this.controller.abort()
    this.progress(label, 0, 1)
  }

  progress(phase: string, done: number, total: number): void {
    const bar = byId<HTMLProgressElement>("export-progress")
    bar.max = Math.max(1, total)
    bar.value = done
    byId("export-status").textContent = `${phase}: ${humanSize(done)} of ${humanSize(total)} (${Math.floor((100 * done) / Math.max(1, total))}%)`
  }

  end(text: string): void {
    byId<HTMLButtonElement>("export-cancel").disabled = true
    byId("export-status").textContent = text
  }

  seconds(): number {
    return (performance.now() - this.started) / 1000
  }
}

export const makeExportView = (o: ExportViewOptions) => {
  const { session, status } = o
  let running: Job | undefined
  const via = byId<HTMLSelectElement>("export-via")
  if (!hasSavePicker()) {
    via.querySelector('option[value="picker"]')?.remove()
    via.value = "download"
  }

  /** Where the file goes, asked for first (the file picker needs the click's user activation). */
  const target = (fileName: string): Promise<ExportTarget> => (via.value === "picker" && hasSavePicker() ? pickTarget(fileName) : downloadTarget(fileName))

  /** Runs one job; a failure or Cancel leaves no partial file or scratch store behind. */
  const run = async (label: string, work: (job: Job) => Promise<string>, cleanup: () => Promise<void>): Promise<void> => {
    if (running !== undefined) throw new Error(`${running.label} is still running; cancel it first`)
    const job = new Job(label, status)
    running = job
    try {
      const done = await work(job)
      job.end(done)
      status(done)
    } catch (e) {
      await cleanup()
      const cancelled = e instanceof ExportCancelled || job.controller.signal.aborted
      job.end(cancelled ? "Cancelled." : `Failed: ${messageOf(e)}`)
      if (!cancelled) throw e
      status(`${label} cancelled.`)
    } finally {
      running = undefined
    }
  }

  const rate = (bytes: number, job: Job) => `${humanSize(bytes)} in ${job.seconds().toFixed(1)} s (${(bytes / 1e6 / Math.max(0.001, job.seconds())).toFixed(1)} MB/s)`

  /** Export the open image (guest view, whole chain) to a file. */
  const exportImage = async (form: HTMLFormElement): Promise<void> => {
    const image = session.image
    if (image === undefined) throw new Error("no image is open")
    const f = new FormData(form)
    const format = String(f.get("format")) as "raw" | "qcow2"
    const compression = (format === "raw" ? "none" : String(f.get("compression"))) as ExportCompression
    const fileName = String(f.get("fileName") ?? "").trim() || `disk.${format}`
    const file = await target(fileName)
    const scratch = formatIdbName({ database: SCRATCH_DATABASE, name: "export" })
    session.policy.approve(scratch)
    const dropScratch = () => Effect.runPromise(Effect.ignore(deleteIdbStore(SCRATCH_DATABASE, "export")))
    await run(
      "Export",
      async (job) => {
        const signal = job.controller.signal
        if (format === "raw") {
          await Effect.runPromise(writeRaw(image, file.writable, { signal, onProgress: (d, t) => job.progress("Writing raw image", d, t) }))
        } else {
          await dropScratch()
          await session.run(
            convertToQcow2(image, scratch, {
              compression,
              clusterSize: Number(f.get("clusterSize")),
              compressor: o.compressor,
              signal,
              onProgress: (d, t) => job.progress(compression === "none" ? "Converting" : `Converting, ${compression}-compressed`, d, t)
            })
          )
          await session.run(copyStore(scratch, file.writable, signal, (d, t) => job.progress("Writing file", d, t)))
          await dropScratch()
        }
        await file.finish()
        return `Exported ${fileName} (${format}${compression === "none" ? "" : `, ${compression}`}): ${rate(image.virtualSize, job)}${file.via === "download" ? ", downloaded" : ""}`
      },
      async () => {
        await file.abort()
        await dropScratch()
      }
    )
  }

  /** Commit: the open image's guest view (an overlay flattened with its backing chain) as a new standalone library image. */
  const commitImage = async (form: HTMLFormElement): Promise<void> => {
    const image = session.image
    if (image === undefined) throw new Error("no image is open")
    const name = String(new FormData(form).get("name") ?? "").trim()
    if (name === "") throw new Error("give the new image a name")
    const location = formatIdbName({ database: o.database, name })
    if (location === session.name) throw new Error("the new image must not replace the open one")
    session.policy.approve(location)
    await run(
      "Commit",
      async (job) => {
        await session.run(
          convertToQcow2(image, location, {
            compression: "none",
            clusterSize: image.clusterSize,
            compressor: o.compressor,
            signal: job.controller.signal,
            onProgress: (d, t) => job.progress("Committing", d, t)
          })
        )
        await o.refreshLibrary()
        return `Committed into the standalone image ${name}: ${rate(image.virtualSize, job)}`
      },
      async () => {
        await Effect.runPromise(Effect.ignore(deleteIdbStore(o.database, name)))
        await o.refreshLibrary()
      }
    )
  }

  /**
   * The stored bytes of a library image as a file, streamed chunk by chunk.
   * The open image holds its store exclusively: it is closed (flushed) for
   * the copy and opened again.
   */
  const downloadStored = async (name: string, fileName: string): Promise<void> => {
    const file = await target(fileName)
    const wasOpen = session.name === name && session.image !== undefined
    if (wasOpen) await session.close()
    try {
      await run(
        "Download",
        async (job) => {
          await session.run(copyStore(name, file.writable, job.controller.signal, (d, t) => job.progress(`Saving ${fileName}`, d, t)))
          await file.finish()
          return `Saved ${fileName}`
        },
        () => file.abort()
      )
    } finally {
      if (wasOpen) await session.reopen(name)
    }
  }

  return { exportImage, commitImage, downloadStored }
}

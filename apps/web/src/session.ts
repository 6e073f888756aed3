import { Effect, Exit, Layer, Scope } from "effect"
import { type ClusterCodec, PortableClusterCodec } from "@qcow2/compress"
import { layerPortable as PortableCiphers, type SectorCipherFactory } from "@qcow2/crypto"
import { StorageOpener } from "@qcow2/storage"
import { openImage, type Image, type OpenOptions } from "@qcow2/image"
import type { HttpBlockStorage } from "@qcow2/storage-http"
import { makeAppOpener, OpenPolicy } from "./opener.js"

/** What opening a name would open: the chain of backing names, each with the policy's verdict. */
export interface ChainStep {
  readonly name: string
  readonly format: string
  readonly allowed: boolean
  /** The image is encrypted (qcow2 with AES or LUKS, or a LUKS image): opening it needs the passphrase. */
  readonly encrypted: boolean
}

/**
 * The app's one open image and everything it needs: the picked files, the
 * opening policy, the HTTP stores (for their counters), and the scope that
 * closes the image (flushing it) when another is opened.
 */
export class Session {
  readonly policy = new OpenPolicy(globalThis.localStorage)
  readonly picked = new Map<string, Blob>()
  readonly httpStores: HttpBlockStorage[] = []
  image: Image | undefined
  name = ""
  private scope: Scope.Closeable | undefined
  /** How the open image was opened (its passphrase included, in memory only while it is open). */
  private options: OpenOptions = {}

  private layer() {
    const opener = makeAppOpener({ picked: this.picked, policy: this.policy, onHttpStore: (s) => this.httpStores.push(s) })
    return Layer.mergeAll(Layer.succeed(StorageOpener, opener), PortableClusterCodec.layer, PortableCiphers)
  }

  /** Runs an effect that needs the app's storage, codecs and ciphers. */
  run<A, E>(effect: Effect.Effect<A, E, StorageOpener | ClusterCodec | SectorCipherFactory>): Promise<A> {
    return Effect.runPromise(effect.pipe(Effect.provide(this.layer())) as Effect.Effect<A, E>)
  }

  /**
   * Walks the backing chain of `name` one image at a time (each opened alone,
   * no backing), so the app can show what it would open before it opens it.
   */
  async plan(name: string): Promise<ChainStep[]> {
    const steps: ChainStep[] = []
    let current: string | undefined = name
    for (let depth = 0; current !== undefined && depth < 16; depth++) {
      const allowed = this.policy.allows(current)
      if (!allowed) {
        steps.push({ name: current, format: "?", allowed, encrypted: false })
        break
      }
      const layer: { format: string; backing: string | undefined; encrypted: boolean } = await this.run(
        Effect.scoped(
          Effect.map(openImage(current, { readOnly: true, openBacking: false, noIo: true }), (image) => ({
            format: image.format,
            encrypted: image.format === "luks" || (image.header !== undefined && image.header.header.cryptMethod !== 0),
            backing: image.backingFileName !== undefined && image.backingFileName !== "" ? image.backingFileResolved : undefined
          }))
        )
      )
      steps.push({ name: current, format: layer.format, allowed, encrypted: layer.encrypted })
      current = layer.backing
    }
    return steps
  }

  /** Opens `name` (closing the image open before), keeping it open until the next open or close. */
  async open(name: string, options: OpenOptions): Promise<Image> {
    await this.close()
    const scope = await Effect.runPromise(Scope.make())
    try {
      const image = await this.run(Scope.provide(openImage(name, options), scope))
      this.scope = scope
      this.image = image
      this.name = name
      this.options = options
      return image
    } catch (e) {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      throw e
    }
  }

  /** Opens the image that was open before a `close`, as it was opened. */
  async reopen(name: string): Promise<Image> {
    return this.open(name, this.options)
  }

  async close(): Promise<void> {
    const scope = this.scope
    this.scope = undefined
    this.image = undefined
    this.httpStores.length = 0
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

import { Effect, Exit, Layer, Scope } from "effect"
import { PortableClusterCodec } from "@qcow2/compress"
import { StorageOpener } from "@qcow2/storage"
import { openImage, type Image, type OpenOptions } from "@qcow2/image"
import type { HttpBlockStorage } from "@qcow2/storage-http"
import { makeAppOpener, OpenPolicy } from "./opener.js"

/** What opening a name would open: the chain of backing names, each with the policy's verdict. */
export interface ChainStep {
  readonly name: string
  readonly format: string
  readonly allowed: boolean
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

  private layer() {
    const opener = makeAppOpener({ picked: this.picked, policy: this.policy, onHttpStore: (s) => this.httpStores.push(s) })
    return Layer.mergeAll(Layer.succeed(StorageOpener, opener), PortableClusterCodec.layer)
  }

  /** Runs an effect that needs the app's storage and codecs. */
  run<A, E>(effect: Effect.Effect<A, E, StorageOpener | PortableClusterCodecService>): Promise<A> {
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
        steps.push({ name: current, format: "?", allowed })
        break
      }
      const layer: { format: string; backing: string | undefined } = await this.run(
        Effect.scoped(
          Effect.map(openImage(current, { readOnly: true, openBacking: false, noIo: true }), (image) => ({
            format: image.format,
            backing: image.backingFileName !== undefined && image.backingFileName !== "" ? image.backingFileResolved : undefined
          }))
        )
      )
      steps.push({ name: current, format: layer.format, allowed })
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
      return image
    } catch (e) {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      throw e
    }
  }

  async close(): Promise<void> {
    const scope = this.scope
    this.scope = undefined
    this.image = undefined
    this.httpStores.length = 0
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

type PortableClusterCodecService = Layer.Success<typeof PortableClusterCodec.layer>

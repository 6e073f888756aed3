import { Effect } from "effect"
import type { ImageFormat } from "@qcow2/image"
import type { ImageEnv } from "../env.js"
import { fail, type CliFailure } from "../errors.js"
import type { Secrets } from "../secrets.js"

export interface AmendCommandOptions {
  readonly file: string
  readonly format?: ImageFormat
  readonly options: ReadonlyArray<string>
  readonly force: boolean
  readonly quiet: boolean
  readonly secrets: Secrets
}

export const runAmend = (_o: AmendCommandOptions): Effect.Effect<number, CliFailure, ImageEnv> => Effect.fail(fail("not yet"))

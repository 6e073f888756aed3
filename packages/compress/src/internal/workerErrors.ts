/**
 * Stand-ins for `../errors.js` inside the bundled Web Worker program
 * (scripts/embed-web-worker.mjs substitutes this module): the worker only
 * sends an error's message back, and the Effect-based error classes would
 * pull Effect into a script that runs no Effect.
 */
class KernelError extends Error {
  constructor(fields: { readonly message: string }) {
    super(fields.message)
  }
}

export class CompressionError extends KernelError {}
export class DecompressionError extends KernelError {}

/**
 * The runnable examples of a README. A fenced code block is runnable when
 * its info string has the word `runnable` after the language:
 *
 *     ```ts runnable      TypeScript: type-checked against the workspace's
 *                         published types, then compiled and run by node
 *     ```js runnable      JavaScript modules, run by node as they are
 *     ```sh runnable      bash, with `qcow2` (and `./qcow2`) the built CLI
 *
 * An HTML comment right before the block, `<!-- setup: COMMAND -->`, is a
 * shell command run first in the example's directory (to make the image
 * the example opens, say); a block right after it whose info string is
 * `text output` is what the example must print, exactly.
 */
export type Language = "ts" | "js" | "sh"

/** One runnable block of one README. */
export interface Example {
  /** The README, relative to the repository root. */
  readonly readme: string
  /** 1-based line of the opening fence. */
  readonly line: number
  readonly language: Language
  readonly code: string
  readonly setup: string | undefined
  readonly expectedOutput: string | undefined
}

interface Block {
  readonly info: ReadonlyArray<string>
  readonly line: number
  readonly code: string
  /** The last non-blank line before the opening fence. */
  readonly before: string | undefined
  /** Whether only blank lines separate this block from the previous one. */
  readonly adjacentToPrevious: boolean
}

const FENCE = /^(`{3,})(.*)$/

const blocksOf = (markdown: string): Block[] => {
  const lines = markdown.split("\n")
  const blocks: Block[] = []
  let lastNonBlank: string | undefined
  let sinceLastBlock = 0
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]!)
    if (open === null) {
      if (lines[i]!.trim() !== "") {
        lastNonBlank = lines[i]
        sinceLastBlock++
      }
      continue
    }
    const start = i
    const body: string[] = []
    for (i++; i < lines.length && !lines[i]!.startsWith(open[1]!); i++) body.push(lines[i]!)
    blocks.push({
      info: open[2]!.trim().split(/\s+/).filter((w) => w !== ""),
      line: start + 1,
      code: body.join("\n") + "\n",
      before: lastNonBlank,
      adjacentToPrevious: blocks.length > 0 && sinceLastBlock === 0
    })
    lastNonBlank = undefined
    sinceLastBlock = 0
  }
  return blocks
}

const SETUP = /^<!--\s*setup:\s*(.*?)\s*-->$/

/** The runnable examples of `markdown`, in order; throws on a runnable block of an unknown language. */
export const runnableExamples = (readme: string, markdown: string): Example[] => {
  const blocks = blocksOf(markdown)
  const examples: Example[] = []
  blocks.forEach((block, index) => {
    if (!block.info.includes("runnable")) return
    const language = block.info[0]
    if (language !== "ts" && language !== "js" && language !== "sh") throw new Error(`${readme}:${block.line}: runnable block in unknown language ${language}`)
    const next = blocks[index + 1]
    const output = next !== undefined && next.adjacentToPrevious && next.info.join(" ") === "text output" ? next.code : undefined
    const setup = block.before !== undefined ? SETUP.exec(block.before.trim())?.[1] : undefined
    examples.push({ readme, line: block.line, language, code: block.code, setup, expectedOutput: output })
  })
  return examples
}

/** Tiny DOM helpers: the app has no framework (a few views, no dependency worth its weight). */

type Child = Node | string | number | undefined | false

export const el = <K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v)
  for (const c of children) if (c !== undefined && c !== false) node.append(typeof c === "number" ? String(c) : c)
  return node
}

export const byId = <T extends HTMLElement>(id: string): T => {
  const node = document.getElementById(id)
  if (node === null) throw new Error(`#${id} is missing from the page`)
  return node as T
}

/** Human size as qemu-img prints it: "64 MiB". */
export const humanSize = (n: number): string => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
  let u = 0
  let v = n
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return u === 0 ? `${n} B` : `${Number.isInteger(v) ? v : v.toFixed(3).replace(/\.?0+$/, "")} ${units[u]}`
}

/** A message of an error, whatever was thrown (Effect failures carry `message`). */
export const messageOf = (e: unknown): string => {
  if (e !== null && typeof e === "object" && "message" in e && typeof (e as { message: unknown }).message === "string") {
    return (e as { message: string }).message
  }
  return String(e)
}

export { errnoOfReason, ImageError } from "@qcow2/cluster"
export type { ImageErrorReason } from "@qcow2/cluster"

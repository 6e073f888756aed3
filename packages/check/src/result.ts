/** The result of a check, with qemu-img check's fields (QAPI ImageCheck). */
export interface CheckResult {
  readonly checkErrors: number
  readonly corruptions: number
  readonly leaks: number
  readonly corruptionsFixed: number
  readonly leaksFixed: number
  readonly imageEndOffset: number
  readonly totalClusters: number
  readonly allocatedClusters: number
  readonly fragmentedClusters: number
  readonly compressedClusters: number
  /** Human-readable findings in qemu-img's wording ("ERROR cluster 5 refcount=0 reference=1", "Leaked cluster 22 refcount=1 reference=0"). */
  readonly messages: ReadonlyArray<string>
}

/**
 * Named points in a format driver's work, raised on the store just before
 * the I/O they name: QEMU's BlkdebugEvent values (qapi/block-core.json),
 * which its qcow2 driver passes down with bdrv_debug_event. Ordinary stores
 * ignore them; a debug filter (`@qcow2/storage/blkdebug`) acts on them.
 */
export const DEBUG_EVENTS = [
  "l1_update",
  "l1_grow_alloc_table",
  "l1_grow_write_table",
  "l1_grow_activate_table",
  "l2_load",
  "l2_update",
  "l2_update_compressed",
  "l2_alloc_cow_read",
  "l2_alloc_write",
  "read_aio",
  "read_backing_aio",
  "read_compressed",
  "write_aio",
  "write_compressed",
  "vmstate_load",
  "vmstate_save",
  "cow_read",
  "cow_write",
  "reftable_load",
  "reftable_grow",
  "reftable_update",
  "refblock_load",
  "refblock_update",
  "refblock_update_part",
  "refblock_alloc",
  "refblock_alloc_hookup",
  "refblock_alloc_write",
  "refblock_alloc_write_blocks",
  "refblock_alloc_write_table",
  "refblock_alloc_switch_table",
  "cluster_alloc",
  "cluster_alloc_bytes",
  "cluster_free",
  "flush_to_os",
  "flush_to_disk",
  "pwritev_rmw_head",
  "pwritev_rmw_after_head",
  "pwritev_rmw_tail",
  "pwritev_rmw_after_tail",
  "pwritev",
  "pwritev_zero",
  "pwritev_done",
  "empty_image_prepare",
  "l1_shrink_write_table",
  "l1_shrink_free_l2_clusters",
  "cor_write",
  "cluster_alloc_space",
  "none"
] as const

export type DebugEvent = (typeof DEBUG_EVENTS)[number]

/** Whether `name` is one of QEMU's event names. */
export const isDebugEvent = (name: string): name is DebugEvent => (DEBUG_EVENTS as ReadonlyArray<string>).includes(name)

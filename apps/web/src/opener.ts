// The opening policy lives in @qcow2/browser (shared with its Promise API).
export * from "@qcow2/browser/opener"

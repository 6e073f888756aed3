export { DEFAULT_CHUNK_SIZE, openIdbStorage, type IdbEnvironment, type IdbStorageOptions } from "./IdbStorage.js"
export {
  deleteIdbStore,
  formatIdbName,
  IdbStorageOpenerLayer,
  listIdbStores,
  makeIdbStorageOpener,
  parseIdbName,
  renameIdbStore,
  storageUsage,
  type IdbName,
  type IdbOpenerOptions,
  type IdbStoreInfo
} from "./IdbStorageOpener.js"

// `{{name}}`: a memory-backed scratch volume of a fixed size, mounted straight onto the pod's
// volume directory. Not attachable: kubelet only calls `init`, `mount` and `unmount`.
//
// Options: `size` (bytes, or a Kubernetes quantity such as `64Mi` or `1G`; default 64Mi, at
// most 1Ti). `readOnly: true` mounts it read-only; the pod's fsGroup owns the root,
// set-group-id, so new files inherit the group.
//
// Every verb is idempotent: kubelet retries everything. A driver never prints (kubelet reads
// stdout and stderr as the reply): diagnostics go through `log`. Sizes are BigInt.

import { Capabilities, Driver, DriverError, exportDriver, parseQuantity } from '../vendor/flex-driver/flex-driver.js';
import * as log from '../vendor/flex-driver/log.js';
import * as mounts from '../vendor/flex-driver/mounts.js';

const DEFAULT_SIZE = 64n << 20n;
// Larger is almost certainly a typo: tmpfs pages come out of the node's memory.
const MAX_SIZE = 1n << 40n;

/** The tmpfs size in bytes, within 1 byte to 1Ti. */
export function parseSize(text) {
  const bytes = parseQuantity(text);
  if (bytes > MAX_SIZE) throw new DriverError(`size ${JSON.stringify(text)} is out of range: 1 byte to 1Ti`);
  return bytes;
}

export class {{class}} extends Driver {
  init() {
    return new Capabilities({
      attach: false,
      // statfs on the pod directory reports the tmpfs usage.
      supportsMetrics: true,
      // The driver sets the group itself, at mount time, without a recursive walk.
      fsGroup: false,
    });
  }

  mount(targetDir, options) {
    const text = options.get('size');
    const bytes = text === undefined ? DEFAULT_SIZE : parseSize(text);
    if (mounts.isMountpoint(targetDir)) {
      log.info(`${targetDir} is already mounted`);
      return;
    }
    const mount = new mounts.Mount('tmpfs', targetDir)
      .fsType('tmpfs')
      .option('nosuid')
      .option('nodev')
      .option(`size=${bytes}`)
      .readOnly(options.readOnly);
    if (options.fsGroup !== undefined) mount.option(`gid=${options.fsGroup}`).option('mode=2775');
    else mount.option('mode=0777');
    mount.mount();
    log.info(`mounted a ${bytes}-byte tmpfs on ${targetDir}`);
  }

  unmount(targetDir) {
    // kubelet also calls unmount for a directory that is not mounted.
    if (mounts.isMountpoint(targetDir)) mounts.unmount(targetDir);
  }
}

// The name componentize-js looks for: the object it exports as flex:volume/verbs.
export const verbs = exportDriver({{class}});

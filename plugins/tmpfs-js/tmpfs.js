// `flex~tmpfs-js`: the tmpfs driver (plugins/tmpfs) in JavaScript. A memory-backed scratch
// volume of a fixed size, mounted straight onto the pod's volume directory. Not attachable:
// kubelet only calls `init`, `mount` and `unmount`.
//
// Why tmpfs and not a directory of /state bound into the pod like flex~hostpath-py:
// componentize-js 0.23 gives JavaScript no file system API (its engine exposes web APIs
// only, and no WASI feature reaches wasi:filesystem), so the driver could not create the
// per-volume directory a bind needs.
//
// Options: `size` (bytes, or a Kubernetes quantity such as `64Mi` or `1G`; default 64Mi, at
// most 1Ti); `inodes` (the tmpfs's nr_inodes); `readOnly: true` mounts it read-only. The pod's
// fsGroup owns the root, set-group-id, so new files inherit the group.

import { Capabilities, Driver, DriverError, exportDriver, parseQuantity } from '../../sdk/js/flex-driver.js';
import * as log from '../../sdk/js/log.js';
import * as mounts from '../../sdk/js/mounts.js';

const DEFAULT_SIZE = 64n << 20n;
// Larger is almost certainly a typo: tmpfs pages come out of the node's memory.
const MAX_SIZE = 1n << 40n;

function size(text) {
  if (text === undefined) return DEFAULT_SIZE;
  const bytes = parseQuantity(text);
  if (bytes > MAX_SIZE) throw new DriverError(`size ${JSON.stringify(text)} is out of range: 1 byte to 1Ti`);
  return bytes;
}

class Tmpfs extends Driver {
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
    const bytes = size(options.get('size'));
    // BigInt() throws a SyntaxError on anything but an integer; the SDK turns it into a
    // Failure that names it, like any exception a verb lets escape.
    const inodes = options.get('inodes') === undefined ? undefined : BigInt(options.get('inodes'));
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
    if (inodes !== undefined) mount.option(`nr_inodes=${inodes}`);
    if (options.fsGroup !== undefined) mount.option(`gid=${options.fsGroup}`).option('mode=2775');
    else mount.option('mode=0777');
    mount.mount();
    log.info(`mounted a ${bytes}-byte tmpfs on ${targetDir}`);
  }

  unmount(targetDir) {
    if (mounts.isMountpoint(targetDir)) mounts.unmount(targetDir);
  }
}

export const verbs = exportDriver(Tmpfs);

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
//
// Provisioning (world `mount-provisioning-driver`, for `flex provisioner`): a StorageClass
// naming `flex/tmpfs-js` gives each claim a PersistentVolume whose options record its size
// (the request rounded up to whole MiB) and the class's `inodes` parameter. Every pod's mount of
// that PV is a fresh tmpfs of that size: a scratch volume whose capacity the scheduler and
// quotas see, not storage that keeps data after its mount. Nothing exists outside the mounts,
// so `delete` has nothing to remove.

import { Capabilities, Driver, DriverError, exportDriver, parseQuantity } from '../../sdk/js/flex-driver.js';
import * as log from '../../sdk/js/log.js';
import * as mounts from '../../sdk/js/mounts.js';
import {
  Provisioned, Provisioner, ProvisionerInfo, exportProvisioning,
} from '../../sdk/js/provisioning.js';

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

const MIB = 1n << 20n;

class SizedScratch extends Provisioner {
  describe() {
    // One tmpfs per mount: two pods never share its contents, so ReadWriteOnce only.
    return new ProvisionerInfo({ parameters: ['inodes'] });
  }

  provision(request) {
    const requested = request.requestedBytes > 0n ? request.requestedBytes : 1n;
    const bytes = ((requested + MIB - 1n) / MIB) * MIB;
    if (bytes > MAX_SIZE) throw new DriverError(`${requested} bytes is over this driver's 1Ti per volume`);
    if (request.limitBytes !== undefined && bytes > request.limitBytes) {
      throw new DriverError(
        `the claim's limit of ${request.limitBytes} bytes is under ${bytes}, its request rounded up to whole MiB`,
      );
    }
    const options = { size: String(bytes) };
    const inodes = request.parameters.get('inodes');
    if (inodes !== undefined) {
      if (!/^[1-9][0-9]{0,18}$/.test(inodes)) {
        throw new DriverError(`StorageClass parameter inodes ${JSON.stringify(inodes)}: expected a positive integer`);
      }
      options.inodes = inodes;
    }
    return new Provisioned(bytes, options);
  }

  delete(name, options) {
    log.info(`${name}: nothing to delete (a tmpfs lives only while it is mounted)`);
  }
}

export const verbs = exportDriver(Tmpfs);
export const provisioning = exportProvisioning(SizedScratch);

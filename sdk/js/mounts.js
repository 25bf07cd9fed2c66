// Mounting through the host. Only the directory kubelet passed in this call may be a target.
// A refusal or a failed mount throws DriverError with the host's message.
import * as host from 'flex:volume/mounts@0.1.0';
import { checked } from './host-error.js';

/** A mount to perform: `new Mount(source, target)` and friends, run with `.mount()`. */
export class Mount {
  constructor(source, target) {
    this.request = { source: String(source), target: String(target), fsType: '', options: [], bind: false };
  }
  /** A bind mount of `source` (a directory) onto `target`. */
  static bind(source, target) {
    const mount = new Mount(source, target);
    mount.request.bind = true;
    return mount;
  }
  fsType(fsType) {
    this.request.fsType = String(fsType);
    return this;
  }
  /** One mount option: a flag such as `ro`, or a file system parameter such as `size=64m`.
   * The host checks each comma-separated piece against the policy and always adds the
   * options the policy requires (`nosuid,nodev` by default). */
  option(option) {
    this.request.options.push(String(option));
    return this;
  }
  readOnly(readOnly) {
    return readOnly ? this.option('ro') : this;
  }
  mount() {
    checked(host.mount, this.request);
  }
}

export const bind = (source, target) => Mount.bind(source, target);

/** Changes the flags of a mount the call may target (`ro`, `nosuid`...). */
export const remount = (target, options) => checked(host.remount, target, options.map(String));
export const unmount = (target) => checked(host.unmount, target);
export const isMountpoint = (path) => checked(host.isMountpoint, path);

// Write a Kubernetes FlexVolume driver for `flex` in JavaScript, as a WebAssembly component
// (componentize-js). The shape is the Rust SDK's (`guest-sdk`): a driver is a subclass of
// `Driver`; every verb defaults to `Not supported` except `init`, which must report the
// driver's capabilities. Privileged work goes through the host, which checks it against the
// node's policy: `./mounts.js`, `./config.js`, `./log.js` (and `./block.js`, `./exec.js` in
// worlds that import them). A driver never prints: diagnostics go through `log`.
//
// Errors are exceptions. `new DriverError("text")` becomes a `Failure` whose message is the
// text; `new NotSupported()` becomes `Not supported`; anything else thrown out of a verb becomes
// a `Failure` naming its type and message (`TypeError: ...`), with the stack in the host's log,
// never a trap.
//
//   import { Capabilities, Driver, exportDriver } from '../../sdk/js/flex-driver.js';
//   import * as mounts from '../../sdk/js/mounts.js';
//
//   class Scratch extends Driver {
//     init() { return new Capabilities({ attach: false }); }
//     mount(targetDir, options) {
//       if (mounts.isMountpoint(targetDir)) return; // kubelet retries: already done is success
//       new mounts.Mount('tmpfs', targetDir).fsType('tmpfs').readOnly(options.readOnly).mount();
//     }
//     unmount(targetDir) {
//       if (mounts.isMountpoint(targetDir)) mounts.unmount(targetDir);
//     }
//   }
//   export const verbs = exportDriver(Scratch); // the name componentize-js looks for
//
// Build with `node sdk/js/build.mjs --world mount-driver DRIVER.js OUT.wasm` from the
// repository root (imports are resolved beneath the current directory).
//
// Numbers: u64 arguments and results (`expandVolume` sizes) are BigInt; a verb may return a
// number or a BigInt.

import * as log from './log.js';

/** A failure with a message for kubelet's events and logs: the reply's `message`. */
export class DriverError extends Error {
  constructor(message) {
    super(message);
    this.name = 'DriverError';
  }
}

/** `Not supported`, which kubelet caches per verb for the driver's lifetime: throw it
 * unconditionally for a verb, never for one volume. */
export class NotSupported extends Error {
  constructor() {
    super('not supported');
    this.name = 'NotSupported';
  }
}

/** What `init` reports. The defaults are kubelet's, except `attach`, which defaults to false:
 * a driver that does not implement attach must say so. */
export class Capabilities {
  constructor({
    attach = false,
    selinuxRelabel = true,
    supportsMetrics = false,
    fsGroup = true,
    requiresFsResize = false,
  } = {}) {
    Object.assign(this, { attach, selinuxRelabel, supportsMetrics, fsGroup, requiresFsResize });
  }
}

/** `m` as a Map: a Map as it is, a plain object by its entries (the SDK's constructors take
 * either, so tests can write `{ size: '1Mi' }`). */
export function asMap(m) {
  return m instanceof Map ? m : new Map(Object.entries(m));
}

/** The option JSON kubelet passes, with the well-known keys parsed (empty strings from
 * kubelet are `undefined`). Every field has a default, so a unit test names only what it
 * needs: `new Options({ readOnly: true, extra: { size: '1Mi' } })`. */
export class Options {
  constructor({
    fsType = undefined, // kubernetes.io/fsType
    readOnly = false, // kubernetes.io/readwrite is `ro`
    pvOrVolumeName = undefined, // kubernetes.io/pvOrVolumeName
    podName = undefined, // kubernetes.io/pod.name, .namespace, .uid (mount only)
    podNamespace = undefined,
    podUid = undefined,
    serviceAccountName = undefined, // kubernetes.io/serviceAccount.name (mount only)
    fsGroup = undefined, // kubernetes.io/mounterArgs.FsGroup (mount only)
    secrets = new Map(), // kubernetes.io/secret/<name>, decoded bytes (mount only)
    extra = new Map(), // every other key: the volume's own options
  } = {}) {
    Object.assign(this, {
      fsType, readOnly, pvOrVolumeName, podName, podNamespace, podUid, serviceAccountName,
      fsGroup, secrets: asMap(secrets), extra: asMap(extra),
    });
  }

  /** A driver-specific option (the volume's `options`, or a StorageClass parameter). */
  get(key, fallback = undefined) {
    return this.extra.has(key) ? this.extra.get(key) : fallback;
  }

  /** A secret from the volume's `secretRef` as a Uint8Array (only `mount` receives them). */
  secret(name) {
    return this.secrets.get(name);
  }

  static fromWit(o) {
    return new Options({
      ...o,
      secrets: new Map(o.secrets.map((s) => [s.name, s.value])),
      extra: new Map(o.extra),
    });
  }
}

const UNITS = {
  '': 1n, k: 1000n, M: 1000n ** 2n, G: 1000n ** 3n, T: 1000n ** 4n,
  Ki: 1n << 10n, Mi: 1n << 20n, Gi: 1n << 30n, Ti: 1n << 40n,
};

/** Bytes (a BigInt) from a size option: plain bytes (`1048576`) or a Kubernetes quantity
 * (`64Mi`, `1G`). Zero and malformed values throw DriverError. */
export function parseQuantity(text) {
  const match = /^([0-9]+)([A-Za-z]*)$/.exec(String(text));
  const unit = match && Object.hasOwn(UNITS, match[2]) ? UNITS[match[2]] : undefined;
  const bytes = unit === undefined ? 0n : BigInt(match[1]) * unit;
  if (bytes === 0n || bytes >= 1n << 64n) {
    throw new DriverError(
      `invalid size ${JSON.stringify(String(text))}: expected bytes or a quantity such as 512Mi or 1Gi`,
    );
  }
  return bytes;
}

/** The FlexVolume verbs. Each defaults to `Not supported`; `init` must be overridden. Every
 * verb must be idempotent: kubelet retries everything. */
export class Driver {
  init() {
    throw new Error('a driver must implement init');
  }
  getVolumeName(options) { throw new NotSupported(); }
  /** Returns the device path. */
  attach(options, node) { throw new NotSupported(); }
  detach(volumeName, node) { throw new NotSupported(); }
  /** Returns the device path; `device` may be empty. */
  waitForAttach(device, options) { throw new NotSupported(); }
  isAttached(options, node) { throw new NotSupported(); }
  mountDevice(deviceMountPath, device, options) { throw new NotSupported(); }
  unmountDevice(deviceMountPath) { throw new NotSupported(); }
  mount(targetDir, options) { throw new NotSupported(); }
  unmount(targetDir) { throw new NotSupported(); }
  /** Returns the new size in bytes. */
  expandVolume(options, deviceMountPath, newSize, oldSize) { throw new NotSupported(); }
  expandFs(options, device, deviceMountPath, newSize, oldSize) { throw new NotSupported(); }
  provision(options) { throw new NotSupported(); }
  delete(options) { throw new NotSupported(); }
}

// What each verb takes (`o` marks the options argument) and returns.
const VERBS = {
  init: ['', 'capabilities'],
  getVolumeName: ['o', 'string'],
  attach: ['o-', 'string'],
  detach: ['--', 'unit'],
  waitForAttach: ['-o', 'string'],
  isAttached: ['o-', 'boolean'],
  mountDevice: ['--o', 'unit'],
  unmountDevice: ['-', 'unit'],
  mount: ['-o', 'unit'],
  unmount: ['-', 'unit'],
  expandVolume: ['o---', 'u64'],
  expandFs: ['o----', 'unit'],
  provision: ['o', 'unit'],
  delete: ['o', 'unit'],
};

function capabilities(caps) {
  if (!(caps instanceof Capabilities)) {
    throw new TypeError('init must return a Capabilities');
  }
  return {
    attach: !!caps.attach,
    selinuxRelabel: !!caps.selinuxRelabel,
    supportsMetrics: !!caps.supportsMetrics,
    fsGroup: !!caps.fsGroup,
    requiresFsResize: !!caps.requiresFsResize,
  };
}

function result(verb, kind, value) {
  switch (kind) {
    case 'capabilities':
      return capabilities(value);
    case 'unit':
      return undefined;
    case 'u64':
      if (typeof value === 'number' || typeof value === 'bigint') return BigInt(value);
      break;
    default:
      if (typeof value === kind) return value;
  }
  throw new TypeError(`${verb} must return a ${kind}, not ${typeof value}`);
}

/** An uncaught exception as kubelet sees it: its type and message. */
function describe(error) {
  if (error instanceof Error) {
    return error.message ? `${error.name}: ${error.message}` : error.name;
  }
  try {
    return `uncaught ${typeof error}: ${String(error)}`;
  } catch {
    return `uncaught ${typeof error}`;
  }
}

/** The WIT `error` an exception thrown out of `verb` becomes (an uncaught one is logged with
 * its stack). For the SDK's own modules (`./provisioning.js`): a driver throws instead. */
export function errorFor(verb, error) {
  if (error instanceof NotSupported) {
    return { tag: 'not-supported' };
  }
  if (error instanceof DriverError) {
    return { tag: 'failure', val: error.message || 'failed' };
  }
  try {
    log.error(`${verb}: uncaught ${describe(error)}\n${error?.stack ?? ''}`);
  } catch {
    // The reply matters more than the log line.
  }
  return { tag: 'failure', val: describe(error) };
}

function call(DriverClass, verb, args) {
  const [shape, returns] = VERBS[verb];
  try {
    const converted = args.map((a, i) => (shape[i] === 'o' ? Options.fromWit(a) : a));
    return result(verb, returns, new DriverClass()[verb](...converted));
  } catch (error) {
    throw errorFor(verb, error);
  }
}

/** The object componentize-js exports as `flex:volume/verbs`, for a `Driver` subclass:
 * `export const verbs = exportDriver(MyDriver);`. */
export function exportDriver(DriverClass) {
  if (typeof DriverClass !== 'function' || !(DriverClass.prototype instanceof Driver)) {
    throw new TypeError('exportDriver() takes a subclass of Driver');
  }
  if (DriverClass.prototype.init === Driver.prototype.init) {
    throw new TypeError(`${DriverClass.name} must implement init`);
  }
  const verbs = {};
  for (const verb of Object.keys(VERBS)) {
    verbs[verb] = (...args) => call(DriverClass, verb, args);
  }
  return verbs;
}

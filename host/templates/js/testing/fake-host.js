// A fake of the component's imports (the mount-driver world: flex:volume/log, mounts and
// config), for unit-testing the driver with plain Node (`npm test`): no componentize-js, no
// wasm, no root. It records every host call and keeps the state the real host keeps (what is
// mounted where); it checks no policy: `flex test` runs the built component for real.
//
//   import { host } from '../testing/fake-host.js';
//   host.reset();
//   host.failNext.set('mount', 'denied: ...'); // the next mount fails with that message
//   ... host.calls, host.logs, host.mounted, host.config

class HostError extends Error {
  // componentize-js throws a WIT `result` error as an Error whose `payload` is the value.
  constructor(payload) {
    super(String(payload));
    this.payload = payload;
  }
}

export const host = {
  calls: [],
  logs: [],
  mounted: new Map(),
  config: new Map(),
  failNext: new Map(),
  reset() {
    this.calls = [];
    this.logs = [];
    this.mounted = new Map();
    this.config = new Map();
    this.failNext = new Map();
    return this;
  },
  call(operation, argument) {
    this.calls.push([operation, argument]);
    if (this.failNext.has(operation)) {
      const message = this.failNext.get(operation);
      this.failNext.delete(operation);
      throw new HostError(message);
    }
  },
};

// flex:volume/mounts
export function mount(request) {
  host.call('mount', structuredClone(request));
  if (host.mounted.has(request.target)) throw new HostError(`${request.target} is already a mount point`);
  host.mounted.set(request.target, request);
}
export function unmount(target) {
  host.call('unmount', target);
  if (!host.mounted.delete(target)) throw new HostError(`${target} is not a mount point`);
}
export function remount(target, options) {
  host.call('remount', [target, options]);
}
export function isMountpoint(path) {
  host.call('isMountpoint', path);
  return host.mounted.has(path);
}

// flex:volume/log
export function log(level, message) {
  host.logs.push([level, message]);
}

// flex:volume/config
export const get = (key) => host.config.get(key);
export const getAll = () => [...host.config];

// Dynamic provisioning for `flex provisioner`: the WIT interface `flex:volume/provisioning`,
// for a component built against a world that exports it (`mount-provisioning-driver`).
//
// `flex provisioner` watches PersistentVolumeClaims whose StorageClass names this driver as its
// `provisioner`. It calls `describe` first and refuses, with an event and no call, a claim
// asking for an access mode or a StorageClass parameter the driver does not list. `provision`
// then creates the backend volume; the PersistentVolume is named `request.name`
// (`pvc-<claim uid>`), gets `capacityBytes` as its capacity and `options` in its
// `flexVolume.options`, which every node verb receives. When a PV with reclaim policy `Delete`
// is released, `delete` gets the PV's name and those options back. Both are retried after any
// failure or crash, so both must be idempotent.
//
//   import { Provisioned, Provisioner, ProvisionerInfo, exportProvisioning }
//     from '../../sdk/js/provisioning.js';
//
//   class Sized extends Provisioner {
//     describe() { return new ProvisionerInfo({ parameters: ['inodes'] }); }
//     provision(request) {
//       return new Provisioned(request.requestedBytes, { size: String(request.requestedBytes) });
//     }
//     delete(name, options) {} // nothing to remove: success, also on a retry
//   }
//   export const provisioning = exportProvisioning(Sized); // the name componentize-js looks for
//
// Errors are the verbs' (`DriverError`, `NotSupported`; anything else thrown becomes a
// `Failure` naming it). Sizes are BigInt.

import { NotSupported, asMap, errorFor } from './flex-driver.js';

/** A claim's access mode, by its Kubernetes name. */
export const AccessMode = Object.freeze({
  READ_WRITE_ONCE: 'ReadWriteOnce',
  READ_ONLY_MANY: 'ReadOnlyMany',
  READ_WRITE_MANY: 'ReadWriteMany',
});

// The WIT enum's cases (componentize-js passes them as these strings), in order.
const WIT_ACCESS_MODES = {
  'read-write-once': AccessMode.READ_WRITE_ONCE,
  'read-only-many': AccessMode.READ_ONLY_MANY,
  'read-write-many': AccessMode.READ_WRITE_MANY,
};

function witAccessMode(mode) {
  const wit = Object.keys(WIT_ACCESS_MODES).find((key) => WIT_ACCESS_MODES[key] === mode);
  if (wit === undefined) throw new TypeError(`unknown access mode ${JSON.stringify(mode)}`);
  return wit;
}

/** What `describe` reports. The defaults: ReadWriteOnce only, no StorageClass parameters,
 * volumes reachable from every node. */
export class ProvisionerInfo {
  constructor({
    accessModes = [AccessMode.READ_WRITE_ONCE],
    // StorageClass `parameters` keys the driver understands (it validates their values).
    parameters = [],
    // The volumes live on the provisioner's machine: each PV gets a node affinity to that
    // node, and only the provisioner there deletes it.
    nodeLocal = false,
  } = {}) {
    Object.assign(this, { accessModes, parameters, nodeLocal });
  }
}

/** One claim to provision. Every field but `name` has a default, for unit tests. */
export class ProvisionRequest {
  constructor({
    name, // the PersistentVolume's name, `pvc-<claim uid>`: the same on every retry
    requestedBytes = 0n, // the claim's resources.requests.storage
    limitBytes = undefined, // resources.limits.storage, if set: never allocate more
    parameters = new Map(), // the StorageClass's parameters
    accessModes = [AccessMode.READ_WRITE_ONCE],
    fsType = undefined, // the StorageClass's fsType parameter, if any
    claimName = '',
    claimNamespace = '',
    claimAnnotations = new Map(),
    selectedNode = undefined, // WaitForFirstConsumer: the node the scheduler chose
  }) {
    if (typeof name !== 'string') throw new TypeError('a ProvisionRequest needs a name');
    Object.assign(this, {
      name, requestedBytes: BigInt(requestedBytes),
      limitBytes: limitBytes === undefined ? undefined : BigInt(limitBytes),
      parameters: asMap(parameters), accessModes, fsType, claimName, claimNamespace,
      claimAnnotations: asMap(claimAnnotations), selectedNode,
    });
  }

  /** The first StorageClass parameter not in `known`, if any. */
  unknownParameter(known) {
    return [...this.parameters.keys()].find((key) => !known.includes(key));
  }

  static fromWit(r) {
    return new ProvisionRequest({
      ...r,
      parameters: new Map(r.parameters),
      accessModes: r.accessModes.map((mode) => WIT_ACCESS_MODES[mode]),
      claimAnnotations: new Map(r.claimAnnotations),
    });
  }
}

/** What `provision` made: the PV's capacity (at least the requested bytes) and the options
 * recorded in the PV (node verbs and `delete` get them back). */
export class Provisioned {
  constructor(capacityBytes, options = {}) {
    this.capacityBytes = BigInt(capacityBytes);
    this.options = asMap(options);
  }
}

/** The provisioning functions. `describe` must be overridden; `provision` and `delete`
 * default to `Not supported`. */
export class Provisioner {
  describe() {
    throw new Error('a provisioner must implement describe');
  }
  /** Creates the volume `request.name`, or returns the one that already exists. */
  provision(request) { throw new NotSupported(); }
  /** Deletes the volume `name` (a Map of the recorded options); one that no longer exists is
   * success. */
  delete(name, options) { throw new NotSupported(); }
}

function info(value) {
  if (!(value instanceof ProvisionerInfo)) throw new TypeError('describe must return a ProvisionerInfo');
  return {
    accessModes: value.accessModes.map(witAccessMode),
    parameters: value.parameters.map(String),
    nodeLocal: !!value.nodeLocal,
  };
}

function provisioned(value) {
  if (!(value instanceof Provisioned)) throw new TypeError('provision must return a Provisioned');
  return {
    capacityBytes: value.capacityBytes,
    options: [...value.options].map(([k, v]) => [String(k), String(v)]),
  };
}

/** The object componentize-js exports as `flex:volume/provisioning`, for a `Provisioner`
 * subclass: `export const provisioning = exportProvisioning(MyProvisioner);`. */
export function exportProvisioning(ProvisionerClass) {
  if (typeof ProvisionerClass !== 'function' || !(ProvisionerClass.prototype instanceof Provisioner)) {
    throw new TypeError('exportProvisioning() takes a subclass of Provisioner');
  }
  if (ProvisionerClass.prototype.describe === Provisioner.prototype.describe) {
    throw new TypeError(`${ProvisionerClass.name} must implement describe`);
  }
  return {
    // `describe` has no error case in the WIT: a throw here traps, and the controller logs
    // the call as failed.
    describe: () => info(new ProvisionerClass().describe()),
    provision: (request) => {
      try {
        return provisioned(new ProvisionerClass().provision(ProvisionRequest.fromWit(request)));
      } catch (error) {
        throw errorFor('provision', error);
      }
    },
    delete: (name, options) => {
      try {
        new ProvisionerClass().delete(name, new Map(options));
        return undefined;
      } catch (error) {
        throw errorFor('delete', error);
      }
    },
  };
}

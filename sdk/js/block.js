// Block devices and loop-backed images, as the policy's `[block]` allows (worlds `driver` and
// `block-driver`). Every refusal throws DriverError with the host's message. Sizes are BigInt.
import * as host from 'flex:volume/block@0.1.0';
import { checked } from './host-error.js';

/** The file system on a device (`ext4`, `xfs`...); undefined when it is blank. */
export const probeFs = (device) => checked(host.probeFs, device);
/** Formats a blank device; the host refuses any device that carries a signature. */
export const mkfs = (device, fsType) => checked(host.mkfs, device, fsType);
export const resizeFs = (device, mountPath) => checked(host.resizeFs, device, mountPath);
export const deviceSize = (device) => checked(host.deviceSize, device);
export const waitForDevice = (device, timeoutMs) => checked(host.waitForDevice, device, timeoutMs);
export const createImage = (name, size) => checked(host.createImage, name, BigInt(size));
export const imageSize = (name) => checked(host.imageSize, name);
export const growImage = (name, size) => checked(host.growImage, name, BigInt(size));
export const deleteImage = (name) => checked(host.deleteImage, name);
export const attachImage = (name) => checked(host.attachImage, name);
export const imageDevice = (name) => checked(host.imageDevice, name);
export const detachImage = (name) => checked(host.detachImage, name);

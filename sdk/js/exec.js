// Host programs the policy's `[[exec.programs]]` grants (world `driver` only), run without a
// shell; anything the policy does not grant throws DriverError before the program starts.
// The result is `{ exitCode, stdout, stderr }` (exitCode undefined when killed; bytes as
// Uint8Array).
import * as host from 'flex:volume/exec@0.1.0';
import { checked } from './host-error.js';

export function run(program, args = [], env = {}) {
  const pairs = env instanceof Map ? [...env] : Array.isArray(env) ? env : Object.entries(env);
  return checked(host.run, program, args.map(String), pairs.map(([k, v]) => [String(k), String(v)]));
}

// Builds a JavaScript FlexVolume driver into a component with componentize-js (0.23.0),
// through its API (the jco CLI cannot read a WIT path here):
//
//   node sdk/js/build.mjs [--world WORLD] [--wit DIR] DRIVER.js OUT.wasm
//
// WORLD is one of wit/flex.wit's worlds (default `mount-driver`: log, mounts, config). Every
// WASI feature of the engine is disabled (stdio, random, clocks, http, fetch-event), so the
// component imports only the world's `flex:volume/*` interfaces. The driver's relative imports
// (this SDK among them) are resolved beneath the deepest directory holding both the driver and
// this SDK. componentize-js comes from sdk/js/node_modules (`npm ci` here, or
// scripts/build-guests.sh).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let world = 'mount-driver';
let wit = join(here, '..', '..', 'wit');
while (args[0]?.startsWith('--')) {
  const [flag, value] = args.splice(0, 2);
  if (flag === '--world') world = value;
  else if (flag === '--wit') wit = value;
  else throw new Error(`unknown option ${flag}`);
}
if (args.length !== 2) {
  console.error('usage: node sdk/js/build.mjs [--world WORLD] [--wit DIR] DRIVER.js OUT.wasm');
  process.exit(2);
}
const source = resolve(args[0]);
const out = resolve(args[1]);

// componentize-js maps the current directory as the module root when the source lies beneath
// it: run from the common ancestor of the driver and the SDK.
const common = (a, b) => {
  const x = a.split(sep);
  const y = b.split(sep);
  let i = 0;
  while (i < x.length && i < y.length && x[i] === y[i]) i++;
  return x.slice(0, i).join(sep) || sep;
};
process.chdir(common(dirname(source), here));

let componentize, version;
try {
  ({ componentize, version } = await import('@bytecodealliance/componentize-js'));
} catch (error) {
  console.error(`componentize-js is not installed: run \`npm ci\` in ${here} (${error.message})`);
  process.exit(1);
}
if (version !== '0.23.0') console.error(`warning: componentize-js ${version}, the SDK is tested with 0.23.0`);
const { component } = await componentize({
  sourcePath: source,
  witPath: resolve(wit),
  worldName: world,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, component);

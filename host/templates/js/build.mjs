// Builds the driver into a WebAssembly component, target/{{wasm}}.wasm, with componentize-js
// through its API (`npm run build`, or `node build.mjs [OUT.wasm]`). The SDK is tested with
// componentize-js 0.23.0, which package.json and package-lock.json pin (`npm ci`).
//
// The component is built against the `mount-driver` world of wit/flex.wit with every WASI
// feature of the engine disabled (stdio, random, clocks, http, fetch-event): it imports only
// flex:volume/log, mounts and config. The driver's relative imports (vendor/flex-driver/, the
// SDK) are resolved beneath this directory.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, 'target', '{{wasm}}.wasm'));

let componentize, version;
try {
  ({ componentize, version } = await import('@bytecodealliance/componentize-js'));
} catch (error) {
  console.error(`componentize-js is not installed: run \`npm ci\` in ${here} (${error.message})`);
  process.exit(1);
}
if (version !== '0.23.0') console.error(`warning: componentize-js ${version}, the SDK is tested with 0.23.0`);

// componentize-js maps the current directory as the module root.
process.chdir(here);
const { component } = await componentize({
  sourcePath: join(here, 'src', 'driver.js'),
  witPath: join(here, 'wit'),
  worldName: 'mount-driver',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, component);
console.error(`built ${out}`);

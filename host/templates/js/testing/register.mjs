// `node --import ./testing/register.mjs --test ...` (what `npm test` runs): resolves the
// component's imports (`flex:volume/mounts@0.1.0`, ...), which only exist inside the
// component, to the fake host in fake-host.js.
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url);
